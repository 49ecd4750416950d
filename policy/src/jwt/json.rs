//! Strict JSON for token headers and payloads: an object member named twice is an error.
//!
//! Parsers disagree on duplicate names (first wins, last wins, error). A token whose `iss`
//! or `sub` appears twice could be read one way here and another way by the application it
//! is forwarded to, so Warden refuses such tokens outright (RFC 7519 §4 allows this).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `bytes` as one JSON value, rejecting duplicate object member names at any depth.
pub(crate) fn from_slice_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

#[derive(Clone, Copy)]
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                let shown: String = name.chars().take(64).collect();
                return Err(de::Error::custom(format_args!(
                    "duplicate member name {shown:?}"
                )));
            }
            let value = map.next_value_seed(StrictValue)?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_serde_json_when_names_are_unique() {
        let text = br#"{"a":1,"b":[true,null,"x",-2,1.5],"c":{"d":{"e":"f"}}}"#;
        let strict = from_slice_strict(text).expect("valid");
        let plain: Value = serde_json::from_slice(text).expect("valid");
        assert_eq!(strict, plain);
    }

    #[test]
    fn duplicate_names_are_refused_at_any_depth() {
        let err = from_slice_strict(br#"{"iss":"a","iss":"b"}"#).expect_err("duplicate");
        assert!(
            err.to_string().contains("duplicate member name \"iss\""),
            "{err}"
        );
        let err = from_slice_strict(br#"{"x":{"y":1,"y":2}}"#).expect_err("nested duplicate");
        assert!(err.to_string().contains("\"y\""), "{err}");
        let err = from_slice_strict(br#"[{"k":1,"k":1}]"#).expect_err("in array");
        assert!(err.to_string().contains("\"k\""), "{err}");
    }

    #[test]
    fn trailing_data_and_deep_nesting_are_errors_not_panics() {
        assert!(from_slice_strict(br#"{"a":1} x"#).is_err());
        let deep = "[".repeat(10_000);
        assert!(from_slice_strict(deep.as_bytes()).is_err());
    }
}
