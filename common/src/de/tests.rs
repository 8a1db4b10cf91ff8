use std::collections::BTreeMap;

use serde::Deserialize;

use super::*;
use crate::yaml::{parse, SourceId};

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Inner {
    temperature: Option<f64>,
    top_k: Option<u32>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Data {
    Builtin,
    Path(String),
    Synthetic { input_len: u32 },
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Outer {
    model: Option<Spanned<String>>,
    batch_size: Option<u32>,
    decoding: Option<Inner>,
    dataset: Option<Data>,
    labels: Option<BTreeMap<String, String>>,
    command: Option<Vec<String>>,
}

fn decode(text: &str) -> Result<Outer, Vec<Diagnostic>> {
    from_node(&parse(SourceId(0), text).expect("yaml"), "")
}

#[test]
fn decodes_a_good_document() {
    let outer = decode(
        "model: m.gguf\nbatch_size: 4\ndecoding: {temperature: 0.7}\ndataset: {synthetic: {input_len: 9}}\nlabels: {gpu: H100}\ncommand: [a, b]\n",
    )
    .expect("valid");
    assert_eq!(outer.model.as_ref().map(|m| m.value.as_str()), Some("m.gguf"));
    assert_eq!(outer.model.map(|m| (m.span.line, m.span.col)), Some((1, 8)));
    assert_eq!(outer.batch_size, Some(4));
    assert_eq!(outer.decoding, Some(Inner { temperature: Some(0.7), top_k: None }));
    assert_eq!(outer.dataset, Some(Data::Synthetic { input_len: 9 }));
    assert_eq!(outer.command, Some(vec!["a".to_owned(), "b".to_owned()]));
    assert_eq!(decode("dataset: builtin\n").expect("unit variant").dataset, Some(Data::Builtin));
    assert_eq!(decode("dataset: {path: p.jsonl}\n").expect("newtype").dataset, Some(Data::Path("p.jsonl".into())));
}

#[test]
fn reports_every_mistake_at_once() {
    let errors =
        decode("batch_sise: 4\nbatch_size: four\ndecoding: {temprature: 1, top_k: -1}\ndataset: builtn\ncommand: ls\n")
            .expect_err("invalid");
    let messages: Vec<String> = errors
        .iter()
        .map(|d| {
            format!(
                "{}:{} {} {}",
                d.span.map_or(0, |s| s.line),
                d.span.map_or(0, |s| s.col),
                d.message,
                d.help.clone().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        messages,
        vec![
            "1:1 unknown field `batch_sise` did you mean `batch_size`?",
            "2:13 `batch_size` must be a whole number ≥ 0, found `four` ",
            "3:12 unknown field `decoding.temprature` did you mean `temperature`?",
            "3:34 `decoding.top_k` must be at least 0, found `-1` ",
            "4:10 unknown value for `dataset`: `builtn` did you mean `builtin`?",
            "5:10 `command` must be a list, found `ls` ",
        ]
    );
}

#[test]
fn wrong_shapes() {
    let errors = decode("decoding: 3\nlabels: [a]\n").expect_err("invalid");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].message.contains("`decoding` must be a map"), "{}", errors[0].message);
}
