//! The same conversion as [`super::write`], driven by the JSON parser instead of a parsed
//! tree: records, strings and numbers are written as they are read, so a record value costs no
//! `serde_json::Value` of its own. Unions, arrays, maps, bytes and fixed values (and any value
//! of the wrong JSON type) are read into a small tree and handed to [`super::write`], so every
//! rule and error message is that function's.
//!
//! Invariant: for a value that converts, the bytes are exactly [`super::write`]'s (the unit
//! tests compare both on every case); a record's fields may come in any JSON order (each is
//! written to a scratch segment, then all in schema order).

use super::{bytes, write, Path};
use crate::avro::Names;
use apache_avro::Schema;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value as Json;
use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

/// Appends the JSON text `text` as one Avro datum of `schema` to `out`.
pub fn write_text(schema: &Schema, names: &Names, text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let error = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = Seed { schema, names, path: &Path::Root, out, error: &error };
    match seed.deserialize(&mut de).and_then(|()| de.end()) {
        Ok(()) => Ok(()),
        // Our own message, without serde_json's position suffix; else a JSON syntax error.
        Err(e) => Err(error.into_inner().unwrap_or_else(|| format!("value: {e}"))),
    }
}

/// Writes one value of `schema`; the first conversion error is kept in `error`.
struct Seed<'a, 'p> {
    schema: &'a Schema,
    names: &'a Names,
    path: &'p Path<'p>,
    out: &'p mut Vec<u8>,
    error: &'p RefCell<Option<String>>,
}

/// A conversion error: kept (the first one) and handed to the parser to stop it.
fn fail<E: de::Error>(error: &RefCell<Option<String>>, message: String) -> E {
    let e = E::custom(&message);
    error.borrow_mut().get_or_insert(message);
    e
}

impl Seed<'_, '_> {
    /// The tree conversion of a value read whole.
    fn write_tree<E: de::Error>(self, json: &Json) -> Result<(), E> {
        let Seed { schema, names, path, out, error } = self;
        write(schema, json, names, path, out).map_err(|m| fail(error, m))
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.schema {
            Schema::Ref { name } => match self.names.get(name) {
                Some(schema) => Seed { schema, ..self }.deserialize(d),
                None => Err(fail(self.error, format!("{}: unresolved schema reference {name}", self.path))),
            },
            Schema::Record(_) | Schema::String | Schema::Int | Schema::Long | Schema::Boolean | Schema::Double => {
                d.deserialize_any(self)
            }
            _ => {
                let json = Json::deserialize(d)?;
                self.write_tree(&json)
            }
        }
    }
}

impl<'de> Visitor<'de> for Seed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a value of {:?}", self.schema)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        match self.schema {
            Schema::String => {
                bytes(self.out, s.as_bytes());
                Ok(())
            }
            _ => self.write_tree(&Json::String(s.to_string())),
        }
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<(), E> {
        self.write_tree(&Json::from(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<(), E> {
        self.write_tree(&Json::from(n))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<(), E> {
        self.write_tree(&Json::from(n))
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        self.write_tree(&Json::Bool(b))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.write_tree(&Json::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let json = Json::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        self.write_tree(&json)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Schema::Record(r) = self.schema else {
            let json = Json::deserialize(de::value::MapAccessDeserializer::new(map))?;
            return self.write_tree(&json);
        };
        // Each field's bytes go to `scratch` as they are read; `at[i]` is field i's segment.
        let mut scratch = Vec::with_capacity(128);
        let mut at: Vec<Option<(usize, usize)>> = vec![None; r.fields.len()];
        while let Some(JsonKey(key)) = map.next_key()? {
            let Some(&i) = r.lookup.get(key.as_ref()) else {
                return Err(fail(self.error, format!("{}.{key}: unknown field", self.path)));
            };
            let f = &r.fields[i];
            let start = scratch.len();
            let path = Path::Field(self.path, &f.name);
            map.next_value_seed(Seed {
                schema: &f.schema,
                names: self.names,
                path: &path,
                out: &mut scratch,
                error: self.error,
            })?;
            // A repeated key: the last one counts, as in a parsed tree.
            at[i] = Some((start, scratch.len()));
        }
        let Seed { names, path, out, error, .. } = self;
        for (f, seg) in r.fields.iter().zip(at) {
            let fpath = Path::Field(path, &f.name);
            match (seg, &f.default) {
                (Some((a, b)), _) => out.extend_from_slice(&scratch[a..b]),
                (None, Some(d)) => {
                    super::write_default(&f.schema, d, names, &fpath, out).map_err(|m| fail(error, m))?
                }
                (None, None) => return Err(fail(error, format!("{fpath}: is required"))),
            }
        }
        Ok(())
    }
}

/// A JSON object key, borrowed from the text unless it had escapes.
pub struct JsonKey<'de>(pub Cow<'de, str>);

impl<'de> Deserialize<'de> for JsonKey<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = JsonKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<JsonKey<'de>, E> {
                Ok(JsonKey(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<JsonKey<'de>, E> {
                Ok(JsonKey(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}
