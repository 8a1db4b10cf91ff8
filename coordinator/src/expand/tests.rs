use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::sweep::tests::{sweep_from, try_sweep_from};

fn ids(text: &str) -> Vec<String> {
    let sweep = sweep_from(text);
    let exp = expand(&sweep).unwrap_or_else(|e| panic!("{e:?}"));
    exp.jobs.iter().map(|j| exp.job_id(j)).collect()
}

#[test]
fn orders() {
    let base = "model: m\nsweep: {batch_size: [1, 2]}\n";
    let seq = ids(&format!("{base}execution: {{cycles: 3, order: sequential}}\n"));
    let short: Vec<&str> = seq.iter().map(|s| &s[..4]).collect();
    assert_eq!(short[0], short[1]);
    assert_eq!(short[1], short[2]);
    assert_ne!(short[2], short[3]);
    assert!(seq[0].ends_with("-c1") && seq[1].ends_with("-c2") && seq[2].ends_with("-c3"));
    let inter = ids(&format!("{base}execution: {{cycles: 3, order: interleaved}}\n"));
    assert_eq!(&inter[0][..16], &inter[2][..16]);
    assert_ne!(&inter[0][..16], &inter[1][..16]);
    let mut a = seq.clone();
    let mut b = inter.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "orders differ only in order");
}

#[test]
fn shuffle_is_reproducible_and_seeded() {
    let text = |seed: u64| {
        format!("model: m\nsweep: {{batch_size: [1, 2, 3, 4, 5, 6, 7, 8]}}\nexecution: {{cycles: 2, order: shuffled, seed: {seed}}}\n")
    };
    assert_eq!(ids(&text(7)), ids(&text(7)));
    assert_ne!(ids(&text(7)), ids(&text(8)));
    let inter = ids("model: m\nsweep: {batch_size: [1, 2, 3, 4, 5, 6, 7, 8]}\nexecution: {cycles: 2}\n");
    let (mut a, mut b) = (ids(&text(7)), inter);
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[test]
fn ids_ignore_key_order_and_track_values() {
    let a =
        ids("model: m\nbatch_size: 2\ndecoding: {temperature: 0.5, top_k: 4}\nsweep: {max_output_tokens: [8, 16]}\n");
    let b =
        ids("decoding: {top_k: 4, temperature: 0.5}\nsweep: {max_output_tokens: [8, 16]}\nbatch_size: 2\nmodel: m\n");
    assert_eq!(a, b);
    // Changing the value of one point changes exactly that point's ids.
    let c =
        ids("model: m\nbatch_size: 2\ndecoding: {temperature: 0.5, top_k: 4}\nsweep: {max_output_tokens: [8, 32]}\n");
    let same: Vec<bool> = a.iter().zip(&c).map(|(x, y)| x == y).collect();
    assert_eq!(same, vec![true, false, true, false, true, false]);
    // Writing a default explicitly is the same experiment.
    assert_eq!(ids("model: m\n"), ids("model: m\nbatch_size: 1\nengine: candle\n"));
}

#[test]
fn duplicates_are_errors() {
    let sweep = sweep_from("model: m\nsweep: {batch_size: [1, 2]}\ninclude:\n  - {batch_size: 2}\n");
    let errors = expand(&sweep).expect_err("duplicate");
    assert!(errors[0].message.contains("repeats grid point (batch_size=2)"), "{}", errors[0].message);
    assert_eq!(errors[0].span.map(|s| s.line), Some(4));
    // 1 and 1.0 are the same temperature: caught as soon as the axis is read.
    let err = try_sweep_from("model: m\nsweep: {decoding.temperature: [1, 1.0]}\n").expect_err("same value");
    assert!(err.to_string().contains("`1.0` is listed twice"), "{err}");
}

#[test]
fn placement_by_labels_and_gpus() {
    let nodes = "nodes:\n  - {name: a, host: a, gpus: 2, labels: {gpu: H100}}\n  - {name: b, host: b, gpus: 1, labels: {gpu: A100}}\n";
    let sweep = sweep_from(&format!("model: m\ndevice: cuda\nsweep: {{requires.gpu: [H100, A100]}}\n{nodes}"));
    let exp = expand(&sweep).expect("places");
    let names: Vec<Vec<u16>> = exp.points.iter().map(|p| exp.placements[p.placement as usize].clone()).collect();
    assert_eq!(names, vec![vec![0], vec![1]]);
    let sweep = sweep_from(&format!("model: m\ndevice: cuda:1\nrequires: {{gpu: A100}}\n{nodes}"));
    let errors = expand(&sweep).expect_err("b has one GPU");
    assert!(errors[0].message.starts_with("no node can run"), "{}", errors[0].message);
    assert!(errors[0].help.as_deref().unwrap_or("").contains("b (gpu=A100; 1 GPUs)"));
}

#[test]
fn excludes_match_resolved_values() {
    let sweep = sweep_from("model: m\nsweep: {batch_size: [1, 2], decoding.temperature: [0, 0.5]}\nexclude:\n  - {batch_size: 2, decoding.temperature: 0.5}\n  - {precision: auto, batch_size: 1, decoding: {temperature: 0.0}}\n");
    let exp = expand(&sweep).expect("valid");
    assert_eq!(exp.counts.excluded, 2);
    assert_eq!(exp.points.len(), 2);
    let sweep = sweep_from("model: m\nsweep: {batch_size: [1, 2]}\nexclude:\n  - {batch_size: 3}\n");
    assert_eq!(expand(&sweep).expect("valid").warnings.len(), 1);
    let sweep = sweep_from("model: m\nsweep: {batch_size: [1]}\nexclude:\n  - {batch_size: 1}\n");
    assert!(expand(&sweep).is_err(), "nothing left to run");
}

#[test]
fn point_rules_report_once_with_the_value_position() {
    let sweep = sweep_from("model: m\nsweep: {batch_size: [0, 1, 2], max_output_tokens: [1, 2, 3]}\n");
    let errors = expand(&sweep).expect_err("batch 0");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].span.map(|s| (s.line, s.col)), Some((2, 22)));
    assert!(try_sweep_from("model: m\nsweep: 3\n").is_err());
}

/// A generated sweep: a grid over up to three numeric axes, exclusions taken from
/// its own values, includes outside the grid, cycles and an order.
#[derive(Debug, Clone)]
struct Gen {
    batch: BTreeSet<u32>,
    tokens: BTreeSet<u32>,
    prompts: BTreeSet<u32>,
    excludes: Vec<(Option<u32>, Option<u32>)>,
    includes: Vec<u32>,
    cycles: u32,
    order: &'static str,
    seed: u64,
}

fn gen() -> impl Strategy<Value = Gen> {
    (
        proptest::collection::btree_set(1u32..64, 1..5),
        proptest::collection::btree_set(1u32..512, 1..4),
        proptest::collection::btree_set(1u32..50, 0..3),
        proptest::collection::vec((proptest::option::of(1u32..64), proptest::option::of(1u32..512)), 0..3),
        proptest::collection::btree_set(1000u32..2000, 0..3),
        1u32..4,
        prop_oneof![Just("sequential"), Just("interleaved"), Just("shuffled")],
        any::<u64>(),
    )
        .prop_map(|(batch, tokens, prompts, excludes, includes, cycles, order, seed)| Gen {
            batch,
            tokens,
            prompts,
            excludes: excludes.into_iter().filter(|(a, b)| a.is_some() || b.is_some()).collect(),
            includes: includes.into_iter().collect(),
            cycles,
            order,
            seed,
        })
}

fn list(values: &BTreeSet<u32>) -> String {
    format!("[{}]", values.iter().map(u32::to_string).collect::<Vec<_>>().join(", "))
}

/// The sweep as YAML; `reordered` writes every map's keys in reverse.
fn yaml(g: &Gen, reordered: bool) -> String {
    let mut axes = vec![format!("batch_size: {}", list(&g.batch)), format!("max_output_tokens: {}", list(&g.tokens))];
    if !g.prompts.is_empty() {
        axes.push(format!("n_prompts: {}", list(&g.prompts)));
    }
    let excludes: Vec<String> = g
        .excludes
        .iter()
        .map(|(b, t)| {
            let mut kv: Vec<String> = Vec::new();
            kv.extend(b.map(|b| format!("batch_size: {b}")));
            kv.extend(t.map(|t| format!("max_output_tokens: {t}")));
            if reordered {
                kv.reverse();
            }
            format!("  - {{{}}}\n", kv.join(", "))
        })
        .collect();
    let includes: Vec<String> = g
        .includes
        .iter()
        .map(|b| {
            if reordered {
                format!("  - {{max_output_tokens: 7, batch_size: {b}}}\n")
            } else {
                format!("  - {{batch_size: {b}, max_output_tokens: 7}}\n")
            }
        })
        .collect();
    let mut top = vec![
        "model: m.gguf\n".to_owned(),
        "decoding: {temperature: 0.5, seed: 3}\n".to_owned(),
        format!("sweep: {{{}}}\n", axes.join(", ")),
        format!("execution: {{cycles: {}, order: {}, seed: {}}}\n", g.cycles, g.order, g.seed),
    ];
    if !excludes.is_empty() {
        top.push(format!("exclude:\n{}", excludes.concat()));
    }
    if !includes.is_empty() {
        top.push(format!("include:\n{}", includes.concat()));
    }
    if reordered {
        top.reverse();
        top[..].iter().map(|s| s.replace("{temperature: 0.5, seed: 3}", "{seed: 3, temperature: 0.5}")).collect()
    } else {
        top.concat()
    }
}

fn brute_force_configs(g: &Gen) -> u64 {
    let prompts: Vec<Option<u32>> =
        if g.prompts.is_empty() { vec![None] } else { g.prompts.iter().map(|p| Some(*p)).collect() };
    let mut n = 0;
    for &b in &g.batch {
        for &t in &g.tokens {
            for _ in &prompts {
                let excluded =
                    g.excludes.iter().any(|(eb, et)| eb.is_none_or(|eb| eb == b) && et.is_none_or(|et| et == t));
                if !excluded {
                    n += 1;
                }
            }
        }
    }
    n + g.includes.len() as u64
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn expansion_properties(g in gen()) {
        let expected = brute_force_configs(&g);
        let sweep = try_sweep_from(&yaml(&g, false)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let result = expand(&sweep);
        if expected == 0 {
            prop_assert!(result.is_err());
            return Ok(());
        }
        let exp = result.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        // count = (grid − excluded + included) × cycles
        prop_assert_eq!(exp.counts.configurations, expected);
        prop_assert_eq!(exp.jobs.len() as u64, expected * u64::from(g.cycles));
        // every (config, cycle) exactly once
        let ids: Vec<String> = exp.jobs.iter().map(|j| exp.job_id(j)).collect();
        let unique: BTreeSet<&String> = ids.iter().collect();
        prop_assert_eq!(unique.len(), ids.len());
        // ids do not depend on key order
        let reordered = try_sweep_from(&yaml(&g, true)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let exp2 = expand(&reordered).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let ids2: BTreeSet<String> = exp2.jobs.iter().map(|j| exp2.job_id(j)).collect();
        prop_assert_eq!(unique.into_iter().cloned().collect::<BTreeSet<String>>(), ids2);
        // the same seed gives the same order
        let again = expand(&try_sweep_from(&yaml(&g, false)).map_err(|e| TestCaseError::fail(e.to_string()))?)
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(ids, again.jobs.iter().map(|j| again.job_id(j)).collect::<Vec<_>>());
    }
}

#[test]
fn a_job_of_several_gpus_is_refused_on_slurm_saying_why() {
    let slurm = "nodes:\n  slurm: {partition: gpu, nodes: 1, gpus_per_node: 4}\n";
    let sweep = sweep_from(&format!("model: m\nengine: command\ncommand: [\"true\"]\ndevice: cuda\ngpus: 2\n{slurm}"));
    let errors = expand(&sweep).expect_err("each step holds one GPU");
    assert!(errors[0].message.contains("2 GPUs cannot run on Slurm nodes yet"), "{}", errors[0].message);
    assert!(expand(&sweep_from(&format!("model: m\ndevice: cuda\ngpus: 1\n{slurm}"))).is_ok());
}
