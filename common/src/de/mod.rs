//! Typed decoding of a [`Node`] tree with serde, reporting *every* mistake at once.
//!
//! A normal serde deserializer stops at the first error. This one records a
//! [`Diagnostic`] (with the node's exact position) and carries on with a stand-in value,
//! so one pass over a file finds all wrong types, unknown keys and unknown enum values.
//! The decoded value is only handed out when nothing was recorded.
//!
//! Raw structs still use `#[serde(deny_unknown_fields)]`: the deserializer filters
//! unknown keys itself (it knows the field list from `deserialize_struct`) so it can
//! suggest the right name, and serde's own check remains as a safety net.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::Deserialize;

use crate::diag::{did_you_mean, one_of, Diagnostic};
use crate::yaml::{Node, Span, Value};

mod access;

use access::{visitor_placeholder_enum, EnumAcc, MapAcc, SeqAcc, SpannedAcc};

/// Decodes `node` as a `T`. `path` names the node in messages (`""` for the document).
pub fn from_node<T: DeserializeOwned>(node: &Node, path: &str) -> Result<T, Vec<Diagnostic>> {
    let sink = Sink::default();
    let result = T::deserialize(NodeDe { node, sink: &sink, path: path.to_owned() });
    let mut diagnostics = sink.0.into_inner();
    match result {
        Ok(value) if diagnostics.is_empty() => Ok(value),
        Ok(_) => Err(diagnostics),
        Err(err) => {
            if !err.reported {
                diagnostics.push(Diagnostic { span: err.span.or(Some(node.span)), message: err.message, help: None });
            }
            Err(diagnostics)
        }
    }
}

#[derive(Default)]
struct Sink(RefCell<Vec<Diagnostic>>);

impl Sink {
    fn push(&self, d: Diagnostic) {
        self.0.borrow_mut().push(d);
    }
}

/// The error type of the recovering deserializer. `reported` errors are already in the
/// sink and are only unwinding.
#[derive(Debug)]
pub struct DeError {
    span: Option<Span>,
    message: String,
    reported: bool,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError { span: None, message: msg.to_string(), reported: false }
    }
}

const SPANNED_NAME: &str = "$__llem_spanned";
const SPANNED_FIELDS: &[&str] = &["$__llem_span", "$__llem_value"];

/// A decoded value and where it was written, for messages from later validation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spanned<T> {
    pub span: Span,
    pub value: T,
}

impl<T> Spanned<T> {
    pub fn new(span: Span, value: T) -> Self {
        Spanned { span, value }
    }
}

impl<T: serde::Serialize> serde::Serialize for Spanned<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Spanned<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value read from a sweep file")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let _: Option<de::IgnoredAny> = map.next_key()?;
                let [source, line, col, len]: [u32; 4] = map.next_value()?;
                let _: Option<de::IgnoredAny> = map.next_key()?;
                let value = map.next_value()?;
                let span = Span { source: crate::yaml::SourceId(source), line, col, len };
                Ok(Spanned { span, value })
            }
        }
        deserializer.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, V(std::marker::PhantomData))
    }
}

struct NodeDe<'a> {
    node: &'a Node,
    sink: &'a Sink,
    path: String,
}

impl<'a> NodeDe<'a> {
    fn child(&self, node: &'a Node, segment: &str) -> NodeDe<'a> {
        let path = if self.path.is_empty() {
            segment.to_owned()
        } else if segment.starts_with('[') {
            format!("{}{segment}", self.path)
        } else {
            format!("{}.{segment}", self.path)
        };
        NodeDe { node, sink: self.sink, path }
    }

    /// Records "`path` must be X, found Y" at this node.
    fn wrong(&self, expected: &str) {
        let found = self.node.value.describe();
        let message = if self.path.is_empty() {
            format!("expected {expected}, found {found}")
        } else {
            format!("`{}` must be {expected}, found {found}", self.path)
        };
        self.sink.push(Diagnostic::at(self.node.span, message));
    }

    fn plain(&self) -> Option<&'a str> {
        match &self.node.value {
            Value::Scalar { text, quoted: false } => Some(text),
            _ => None,
        }
    }

    fn int<T: TryFrom<i128> + Default + fmt::Display>(&self, what: &str, min: T, max: T) -> T {
        let parsed = self.plain().and_then(|t| t.replace('_', "").parse::<i128>().ok());
        match parsed.map(|v| (v, T::try_from(v))) {
            Some((_, Ok(v))) => v,
            Some((v, Err(_))) => {
                let text = self.node.as_scalar().unwrap_or("");
                let bound = if v < 0 { format!("at least {min}") } else { format!("at most {max}") };
                let message = if self.path.is_empty() {
                    format!("`{text}` is out of range: expected {bound}")
                } else {
                    format!("`{}` must be {bound}, found `{text}`", self.path)
                };
                self.sink.push(Diagnostic::at(self.node.span, message));
                T::default()
            }
            None => {
                self.wrong(what);
                T::default()
            }
        }
    }

    fn float(&self) -> f64 {
        match self.plain().and_then(parse_float) {
            Some(v) => v,
            None => {
                self.wrong("a number");
                0.0
            }
        }
    }

    /// Adds this node's position to errors raised by visitors.
    fn locate(&self, err: DeError) -> DeError {
        if err.reported {
            return err;
        }
        let message = if self.path.is_empty() { err.message } else { format!("`{}`: {}", self.path, err.message) };
        DeError { span: err.span.or(Some(self.node.span)), message, reported: false }
    }

    fn variant_name(&self, name: &str, variants: &'static [&'static str], at: &Node) -> Option<&'static str> {
        if let Some(v) = variants.iter().find(|v| **v == name) {
            return Some(v);
        }
        let what = if self.path.is_empty() { "value".to_owned() } else { format!("value for `{}`", self.path) };
        let help = did_you_mean(name, variants.iter().copied())
            .unwrap_or_else(|| format!("expected one of {}", one_of(variants)));
        self.sink.push(Diagnostic::at(at.span, format!("unknown {what}: `{name}`")).with_help(help));
        None
    }
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        ".inf" | ".Inf" | ".INF" | "+.inf" => Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Some(f64::NAN),
        _ if text.chars().any(|c| c.is_ascii_digit()) => text.replace('_', "").parse().ok(),
        _ => None,
    }
}

macro_rules! int_methods {
    ($($method:ident $ty:ty, $visit:ident, $what:literal;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let v: $ty = self.int($what, <$ty>::MIN, <$ty>::MAX);
            visitor.$visit(v.into()).map_err(|e| self.locate(e))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Scalar { text, quoted: true } => visitor.visit_str(text),
            Value::Scalar { text, quoted: false } => {
                if let Ok(b) = text.parse::<bool>() {
                    visitor.visit_bool(b)
                } else if let Ok(i) = text.parse::<i64>() {
                    visitor.visit_i64(i)
                } else if let Ok(u) = text.parse::<u64>() {
                    visitor.visit_u64(u)
                } else if let Some(f) = parse_float(text) {
                    visitor.visit_f64(f)
                } else {
                    visitor.visit_str(text)
                }
            }
            Value::Seq(_) => return self.deserialize_seq(visitor),
            Value::Map(_) => return self.deserialize_map(visitor),
        };
        result.map_err(|e| self.locate(e))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let v = match self.plain() {
            Some("true" | "True" | "TRUE") => true,
            Some("false" | "False" | "FALSE") => false,
            _ => {
                self.wrong("`true` or `false`");
                false
            }
        };
        visitor.visit_bool(v).map_err(|e| self.locate(e))
    }

    int_methods! {
        deserialize_i8 i8, visit_i64, "a whole number";
        deserialize_i16 i16, visit_i64, "a whole number";
        deserialize_i32 i32, visit_i64, "a whole number";
        deserialize_i64 i64, visit_i64, "a whole number";
        deserialize_u8 u8, visit_u64, "a whole number ≥ 0";
        deserialize_u16 u16, visit_u64, "a whole number ≥ 0";
        deserialize_u32 u32, visit_u64, "a whole number ≥ 0";
        deserialize_u64 u64, visit_u64, "a whole number ≥ 0";
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let v = self.float();
        visitor.visit_f64(v).map_err(|e| self.locate(e))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let text = match &self.node.value {
            Value::Scalar { text, .. } => text.as_str(),
            _ => {
                self.wrong("text");
                ""
            }
        };
        visitor.visit_str(text).map_err(|e| self.locate(e))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.value != Value::Null {
            self.wrong("empty");
        }
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Seq(items) => {
                let access = SeqAcc { parent: &self, items: items.iter().enumerate() };
                visitor.visit_seq(access).map_err(|e| self.locate(e))
            }
            _ => {
                self.wrong("a list");
                visitor
                    .visit_seq(de::value::SeqDeserializer::new(std::iter::empty::<()>()))
                    .map_err(|e: DeError| self.locate(e))
            }
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.map_with_fields(None, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if name == SPANNED_NAME {
            let span = self.node.span;
            let parts = [span.source.0, span.line, span.col, span.len];
            return visitor.visit_map(SpannedAcc { node: Some(self), span: Some(parts) });
        }
        self.map_with_fields(Some(fields), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let placeholder = || visitor_placeholder_enum(variants);
        match &self.node.value {
            Value::Scalar { text, .. } => match self.variant_name(text, variants, self.node) {
                Some(name) => visitor.visit_enum(EnumAcc { de: self, name, unit_form: true }),
                None => visitor.visit_enum(placeholder()).map_err(|e| self.locate(e)),
            },
            Value::Map(entries) if entries.len() == 1 => {
                let (key, value) = &entries[0];
                let name = key.as_scalar().and_then(|k| self.variant_name(k, variants, key));
                match name {
                    Some(name) => visitor.visit_enum(EnumAcc { de: self.child(value, name), name, unit_form: false }),
                    None => visitor.visit_enum(placeholder()).map_err(|e| self.locate(e)),
                }
            }
            _ => {
                self.wrong(&format!("one of {}", one_of(variants)));
                visitor.visit_enum(placeholder()).map_err(|e| self.locate(e))
            }
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

impl<'a> NodeDe<'a> {
    fn map_with_fields<'de, V: Visitor<'de>>(
        self,
        fields: Option<&'static [&'static str]>,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Map(entries) => {
                let mut kept = Vec::with_capacity(entries.len());
                for (key, value) in entries {
                    let Some(name) = key.as_scalar() else {
                        self.sink.push(Diagnostic::at(key.span, "a key must be a plain name, not a list or map"));
                        continue;
                    };
                    if let Some(fields) = fields {
                        if !fields.contains(&name) {
                            let full =
                                if self.path.is_empty() { name.to_owned() } else { format!("{}.{name}", self.path) };
                            let help = did_you_mean(name, fields.iter().copied())
                                .unwrap_or_else(|| format!("known fields here: {}", one_of(fields)));
                            self.sink.push(Diagnostic::at(key.span, format!("unknown field `{full}`")).with_help(help));
                            continue;
                        }
                    }
                    kept.push((name, value));
                }
                let access = MapAcc { parent: &self, entries: kept.into_iter(), value: None };
                visitor.visit_map(access).map_err(|e| self.locate(e))
            }
            _ => {
                self.wrong("a map of `key: value` entries");
                let empty = de::value::MapDeserializer::new(std::iter::empty::<((), ())>());
                visitor.visit_map(empty).map_err(|e: DeError| self.locate(e))
            }
        }
    }
}

#[cfg(test)]
mod tests;
