//! A YAML document as a tree of nodes that remember where they came from.
//!
//! serde alone reports one error and forgets positions; llem wants every mistake in a
//! sweep file at once, each with `file:line:col`. So YAML is read into this [`Node`] tree
//! first (with `saphyr-parser`, which gives exact positions), and typed decoding
//! ([`crate::de`]) walks the tree.

use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle};

/// Where a piece of text came from: a file name and its contents.
#[derive(Debug, Clone)]
pub struct Source {
    /// The name shown in diagnostics (the path as the user gave it).
    pub name: String,
    /// The whole text of the file.
    pub text: Arc<str>,
}

/// Index of a [`Source`] inside a [`Sources`] table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SourceId(pub u32);

/// All files read while loading one sweep (the sweep, its `base:` chain, `nodes_file:`).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    files: Vec<Source>,
}

impl Sources {
    /// Registers a file's text and returns its id.
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<Arc<str>>) -> SourceId {
        let id = SourceId(u32::try_from(self.files.len()).unwrap_or(u32::MAX));
        self.files.push(Source { name: name.into(), text: text.into() });
        id
    }

    /// The file behind `id`.
    pub fn get(&self, id: SourceId) -> Option<&Source> {
        self.files.get(id.0 as usize)
    }
}

/// A position in a source: 1-based line and column (in characters), plus the length of
/// the marked text in characters (at least 1, so a caret can always be drawn).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Span {
    pub source: SourceId,
    pub line: u32,
    pub col: u32,
    pub len: u32,
}

/// One YAML value and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub span: Span,
    pub value: Value,
}

/// The shape of a [`Node`]. Scalars keep their text: their type (number, bool, string) is
/// decided by what the reader asks for, the way YAML's core schema intends.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null`, or nothing at all.
    Null,
    /// Any scalar. `quoted` scalars are always strings.
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    /// Entries in file order. Duplicate keys are rejected while parsing.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// A short noun for messages: "a list", "a map", "the number `3`".
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "nothing (null)".to_owned(),
            Value::Scalar { text, quoted: true } => format!("the string \"{text}\""),
            Value::Scalar { text, quoted: false } => format!("`{text}`"),
            Value::Seq(_) => "a list".to_owned(),
            Value::Map(_) => "a map".to_owned(),
        }
    }
}

impl Node {
    pub fn new(span: Span, value: Value) -> Self {
        Node { span, value }
    }

    /// The entries when this is a map.
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The text when this is a scalar.
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Looks a key up in a map node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?.iter().find(|(k, _)| k.as_scalar() == Some(key)).map(|(_, v)| v)
    }
}

/// A YAML syntax problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub span: Span,
    pub message: String,
}

/// Parses one YAML document. An empty document is [`Value::Null`].
pub fn parse(source: SourceId, text: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder { source, stack: Vec::new(), anchors: Vec::new(), root: None };
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| SyntaxError {
            span: builder.span_at(e.marker().line(), e.marker().col(), 1),
            message: format!("invalid YAML: {}", e.info()),
        })?;
        let at = builder.span_at(span.start.line(), span.start.col(), 1);
        builder.event(event, at, span.end.index().saturating_sub(span.start.index()))?;
    }
    Ok(builder.root.unwrap_or(Node::new(Span { source, line: 1, col: 1, len: 1 }, Value::Null)))
}

enum Open {
    Seq { span: Span, anchor: usize, items: Vec<Node> },
    Map { span: Span, anchor: usize, entries: Vec<(Node, Node)>, key: Option<Node> },
}

struct Builder {
    source: SourceId,
    stack: Vec<Open>,
    anchors: Vec<(usize, Node)>,
    root: Option<Node>,
}

impl Builder {
    fn span_at(&self, line: usize, col0: usize, len: usize) -> Span {
        Span {
            source: self.source,
            line: u32::try_from(line.max(1)).unwrap_or(u32::MAX),
            col: u32::try_from(col0 + 1).unwrap_or(u32::MAX),
            len: u32::try_from(len.max(1)).unwrap_or(u32::MAX),
        }
    }

    fn event(&mut self, event: Event<'_>, at: Span, len_chars: usize) -> Result<(), SyntaxError> {
        match event {
            Event::Scalar(text, style, anchor, _tag) => {
                let quoted = !matches!(style, ScalarStyle::Plain);
                let value = if !quoted && is_null(&text) {
                    Value::Null
                } else {
                    Value::Scalar { text: text.into_owned(), quoted }
                };
                // Plain scalars span exactly their text; quoted ones include the quotes.
                let len = if quoted { len_chars } else { value_len(&value, len_chars) };
                let span = Span { len: u32::try_from(len.max(1)).unwrap_or(u32::MAX), ..at };
                self.push(Node::new(span, value), anchor)
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Open::Seq { span: at, anchor, items: Vec::new() });
                Ok(())
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Open::Map { span: at, anchor, entries: Vec::new(), key: None });
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Open::Seq { span, anchor, items }) => (Node::new(span, Value::Seq(items)), anchor),
                    Some(Open::Map { span, anchor, entries, .. }) => (Node::new(span, Value::Map(entries)), anchor),
                    None => return Ok(()),
                };
                self.push(node, anchor)
            }
            Event::Alias(id) => {
                let node = self
                    .anchors
                    .iter()
                    .rev()
                    .find(|(a, _)| *a == id)
                    .map(|(_, n)| n.clone())
                    .ok_or_else(|| SyntaxError { span: at, message: "unknown alias".to_owned() })?;
                self.push(node, 0)
            }
            Event::DocumentStart(_) if self.root.is_some() => Err(SyntaxError {
                span: at,
                message: "a second YAML document (`---`) is not allowed here; put everything in one document"
                    .to_owned(),
            }),
            _ => Ok(()),
        }
    }

    fn push(&mut self, node: Node, anchor: usize) -> Result<(), SyntaxError> {
        if anchor != 0 {
            self.anchors.push((anchor, node.clone()));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq { items, .. }) => items.push(node),
            Some(Open::Map { entries, key, .. }) => match key.take() {
                None => {
                    if let Some(name) = node.as_scalar() {
                        if let Some((first, _)) = entries.iter().find(|(k, _)| k.as_scalar() == Some(name)) {
                            return Err(SyntaxError {
                                span: node.span,
                                message: format!(
                                    "duplicate key `{name}` (first written at line {}); a key may appear once per map",
                                    first.span.line
                                ),
                            });
                        }
                    }
                    *key = Some(node);
                }
                Some(k) => entries.push((k, node)),
            },
        }
        Ok(())
    }
}

fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

fn value_len(value: &Value, fallback: usize) -> usize {
    match value {
        Value::Scalar { text, .. } if !text.contains('\n') => text.chars().count(),
        _ => fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Node {
        parse(SourceId(0), text).expect("valid yaml")
    }

    #[test]
    fn positions_are_one_based_and_exact() {
        let node = p("model: a.gguf\nbatch_size: 4\n");
        let entries = node.as_map().expect("map");
        assert_eq!(entries[1].0.span.line, 2);
        assert_eq!(entries[1].0.span.col, 1);
        assert_eq!(entries[1].0.span.len, 10);
        assert_eq!(entries[1].1.span.col, 13);
        assert_eq!(entries[1].1.as_scalar(), Some("4"));
    }

    #[test]
    fn nulls_and_quoted_scalars() {
        let node = p("a: ~\nb:\nc: 'null'\n");
        assert_eq!(node.get("a").map(|n| &n.value), Some(&Value::Null));
        assert_eq!(node.get("b").map(|n| &n.value), Some(&Value::Null));
        assert_eq!(node.get("c").map(|n| &n.value), Some(&Value::Scalar { text: "null".into(), quoted: true }));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse(SourceId(0), "a: 1\nb: 2\na: 3\n").expect_err("duplicate");
        assert_eq!(err.span.line, 3);
        assert!(err.message.contains("duplicate key `a`"), "{}", err.message);
    }

    #[test]
    fn aliases_copy_the_anchored_node() {
        let node = p("x: &v [1, 2]\ny: *v\n");
        assert_eq!(node.get("x").map(|n| &n.value), node.get("y").map(|n| &n.value));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse(SourceId(0), "a: [1, 2\nb: 3\n").expect_err("unclosed");
        assert!(err.span.line >= 1);
        assert!(err.message.starts_with("invalid YAML"), "{}", err.message);
    }

    #[test]
    fn empty_document_is_null() {
        assert_eq!(p("").value, Value::Null);
        assert_eq!(p("# only a comment\n").value, Value::Null);
    }
}
