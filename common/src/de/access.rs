//! The serde access types of the node deserializer: sequences, maps, `Spanned` values,
//! enums, and the stand-ins that let decoding carry on after a mistake.

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use super::{DeError, NodeDe, SPANNED_FIELDS, SPANNED_NAME};
use crate::diag::Diagnostic;
use crate::yaml::{Node, Value};

pub(super) struct SeqAcc<'p, 'a> {
    pub(super) parent: &'p NodeDe<'a>,
    pub(super) items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
}

impl<'de> de::SeqAccess<'de> for SeqAcc<'_, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some((i, node)) => seed.deserialize(self.parent.child(node, &format!("[{i}]"))).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

pub(super) struct MapAcc<'p, 'a> {
    pub(super) parent: &'p NodeDe<'a>,
    pub(super) entries: std::vec::IntoIter<(&'a str, &'a Node)>,
    pub(super) value: Option<(&'a str, &'a Node)>,
}

impl<'de> de::MapAccess<'de> for MapAcc<'_, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            Some(entry) => {
                self.value = Some(entry);
                let key: de::value::StrDeserializer<'_, DeError> = entry.0.into_deserializer();
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (name, node) = self.value.take().ok_or_else(|| de::Error::custom("value without a key"))?;
        let child = self.parent.child(node, name);
        seed.deserialize(child).map_err(|err| {
            if !err.reported {
                self.parent.sink.push(Diagnostic {
                    span: err.span.or(Some(node.span)),
                    message: err.message,
                    help: None,
                });
            }
            DeError { span: None, message: String::new(), reported: true }
        })
    }
}

pub(super) struct SpannedAcc<'a> {
    pub(super) node: Option<NodeDe<'a>>,
    pub(super) span: Option<[u32; 4]>,
}

impl<'de> de::MapAccess<'de> for SpannedAcc<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        let key = if self.span.is_some() {
            SPANNED_FIELDS[0]
        } else if self.node.is_some() {
            SPANNED_FIELDS[1]
        } else {
            return Ok(None);
        };
        seed.deserialize(IntoDeserializer::<DeError>::into_deserializer(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        if let Some(parts) = self.span.take() {
            return seed.deserialize(de::value::SeqDeserializer::new(parts.into_iter()));
        }
        match self.node.take() {
            Some(node) => seed.deserialize(node),
            None => Err(de::Error::custom("no more values")),
        }
    }
}

pub(super) struct EnumAcc<'a> {
    /// The node holding the variant's content (for `{name: content}`), or the scalar
    /// itself (for a bare `name`, `unit_form`).
    pub(super) de: NodeDe<'a>,
    pub(super) name: &'static str,
    pub(super) unit_form: bool,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumAcc<'a> {
    type Error = DeError;
    type Variant = EnumAcc<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self::Variant), DeError> {
        let name: de::value::StrDeserializer<'_, DeError> = self.name.into_deserializer();
        let value = seed.deserialize(name)?;
        Ok((value, self))
    }
}

impl EnumAcc<'_> {
    /// A bare name was written for a variant that needs settings.
    fn needs_content(&self) {
        let field = &self.de.path;
        let example = if field.is_empty() {
            format!("`{{{}: ...}}`", self.name)
        } else {
            format!("`{field}: {{{}: ...}}`", self.name)
        };
        self.de.sink.push(
            Diagnostic::at(self.de.node.span, format!("`{}` needs a value", self.name))
                .with_help(format!("write it as {example}")),
        );
    }
}

impl<'de> de::VariantAccess<'de> for EnumAcc<'_> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        if !self.unit_form && self.de.node.value != Value::Null {
            self.de.sink.push(Diagnostic::at(self.de.node.span, format!("`{}` takes no settings", self.name)));
        }
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        if self.unit_form {
            self.needs_content();
            return seed.deserialize(Placeholder).map_err(silent);
        }
        seed.deserialize(self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, DeError> {
        if self.unit_form {
            self.needs_content();
            return de::Deserializer::deserialize_seq(Placeholder, visitor);
        }
        de::Deserializer::deserialize_seq(self.de, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value, DeError> {
        if self.unit_form {
            self.needs_content();
            return de::Deserializer::deserialize_map(Placeholder, visitor);
        }
        self.de.map_with_fields(Some(fields), visitor)
    }
}

/// After an unknown variant was reported: an enum access that yields the first variant
/// with stand-in content, so decoding continues to find further mistakes.
pub(super) fn visitor_placeholder_enum(variants: &'static [&'static str]) -> PlaceholderEnum {
    PlaceholderEnum(variants.first().copied().unwrap_or(""))
}

pub(super) struct PlaceholderEnum(&'static str);
pub(super) struct Placeholder;

pub(super) fn silent(mut e: DeError) -> DeError {
    e.reported = true;
    e
}

impl<'de> de::EnumAccess<'de> for PlaceholderEnum {
    type Error = DeError;
    type Variant = Placeholder;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Placeholder), DeError> {
        let name: de::value::StrDeserializer<'_, DeError> = self.0.into_deserializer();
        Ok((seed.deserialize(name).map_err(silent)?, Placeholder))
    }
}

impl<'de> de::VariantAccess<'de> for Placeholder {
    type Error = DeError;
    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(Placeholder).map_err(silent)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(Placeholder, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(self, _: &'static [&'static str], visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_map(Placeholder, visitor)
    }
}

/// Produces stand-in values (zero, empty, first variant) and never records anything:
/// the mistake that made it necessary was already reported.
impl<'de> de::Deserializer<'de> for Placeholder {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit().map_err(silent)
    }
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_bool(false).map_err(silent)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_i64(0).map_err(silent)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_u64(0).map_err(silent)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_f64(0.0).map_err(silent)
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_str("").map_err(silent)
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_none().map_err(silent)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_seq(de::value::SeqDeserializer::new(std::iter::empty::<()>())).map_err(silent)
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_map(de::value::MapDeserializer::new(std::iter::empty::<((), ())>())).map_err(silent)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if name == SPANNED_NAME {
            return visitor.visit_map(SpannedAcc { node: None, span: Some([0; 4]) }).map_err(silent);
        }
        self.deserialize_map(visitor)
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_enum(visitor_placeholder_enum(variants)).map_err(silent)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 u8 u16 u32 f32 char string bytes byte_buf unit unit_struct
        tuple tuple_struct identifier ignored_any
    }
}
