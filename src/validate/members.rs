//! Reading a body's top level: borrowed `(key, &RawValue)` members in body order, and what a raw value holds.
//!
//! Nothing is copied: a 15 MB image string stays where it is in the body. A key or string with JSON escapes is
//! decoded into an owned copy (e.g. base64 sent with `\/` escapes is copied once).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// One top-level member: its decoded key and its raw value (a slice of the body).
pub(crate) struct Member<'a> {
    pub key: Cow<'a, str>,
    pub value: &'a RawValue,
}

struct Members<'a>(Vec<Member<'a>>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    out.push(Member { key, value });
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A key borrowed from the body when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

const EXAMPLE_BODY: &str =
    r#"{"model": "viduq2", "images": ["https://example.com/first-frame.png"]}"#;

/// The body as text and its top-level members in body order; the error says what to send instead.
pub(crate) fn parse_members(body: &[u8]) -> Result<(&str, Vec<Member<'_>>), String> {
    let text = std::str::from_utf8(body).map_err(|e| not_utf8(e.valid_up_to()))?;
    let members =
        serde_json::from_str::<Members<'_>>(text).map_err(|e| not_json(&e.to_string()))?;
    Ok((text, members.0))
}

/// The refusal of a body that is not UTF-8: `offset` is the first invalid byte's.
pub(crate) fn not_utf8(offset: usize) -> String {
    format!(
        "the body is not UTF-8 (invalid byte at offset {offset}): send a UTF-8 JSON object such as {EXAMPLE_BODY}"
    )
}

/// The refusal of a body that is not a JSON object, with what is wrong.
pub(crate) fn not_json(what: &str) -> String {
    format!("the body is not a JSON object ({what}): send a JSON object such as {EXAMPLE_BODY}")
}

/// The JSON type of a raw value, from its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

pub(crate) fn kind(raw: &RawValue) -> Kind {
    match raw.get().as_bytes().first() {
        Some(b'n') => Kind::Null,
        Some(b't' | b'f') => Kind::Bool,
        Some(b'"') => Kind::String,
        Some(b'[') => Kind::Array,
        Some(b'{') => Kind::Object,
        _ => Kind::Number,
    }
}

/// `a string ("5")`, `a number (5.0)`, `an object` … for messages.
pub(crate) fn describe(raw: &RawValue) -> String {
    let text = raw.get();
    match kind(raw) {
        Kind::Null => "null".into(),
        Kind::Bool => format!("a boolean ({text})"),
        Kind::Number => format!("a number ({})", preview(text, 32)),
        Kind::String => format!("a string ({})", preview(text, 40)),
        Kind::Array => "an array".into(),
        Kind::Object => "an object".into(),
    }
}

/// At most `max` characters of `s`, with an ellipsis when cut.
pub(crate) fn preview(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => Cow::Borrowed(s),
        Some((i, _)) => Cow::Owned(format!("{}…", &s[..i])),
    }
}

/// The string a raw JSON string holds: borrowed when it has no escapes.
pub(crate) fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if kind(raw) != Kind::String {
        return None;
    }
    if !text.as_bytes().contains(&b'\\') {
        // serde_json has checked it is one well-formed string: the quotes are its first and last bytes.
        return text.get(1..text.len() - 1).map(Cow::Borrowed);
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

/// The common `images` value — an array holding one string without escapes — read without a second JSON pass
/// over a 15 MB data URI: serde_json has already checked that the array is well-formed, so when its trimmed
/// inside starts and ends with a quote and holds no other quote or backslash (one SIMD scan), it is exactly that
/// one string, and this is its text. `None` sends anything else through the full parse.
pub(crate) fn one_plain_string(array: &RawValue) -> Option<&str> {
    let inner = array
        .get()
        .strip_prefix('[')?
        .strip_suffix(']')?
        .trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\r'));
    let text = inner.strip_prefix('"')?.strip_suffix('"')?;
    match memchr::memchr2(b'"', b'\\', text.as_bytes()) {
        Some(_) => None,
        None => Some(text),
    }
}

/// A JSON integer, saturated to i64 (every range checked here is far inside it). `None` when not an integer.
pub(crate) fn raw_int(raw: &RawValue) -> Option<i64> {
    let text = raw.get();
    if kind(raw) != Kind::Number || text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        return None;
    }
    Some(text.parse::<i64>().unwrap_or(if text.starts_with('-') {
        i64::MIN
    } else {
        i64::MAX
    }))
}

pub(crate) fn raw_bool(raw: &RawValue) -> Option<bool> {
    match raw.get() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(t: &str) -> &RawValue {
        serde_json::from_str(t).unwrap()
    }

    #[test]
    fn one_plain_string_takes_only_a_lone_string_without_escapes() {
        assert_eq!(
            one_plain_string(raw(r#"["https://a/b.png"]"#)),
            Some("https://a/b.png")
        );
        assert_eq!(one_plain_string(raw("[ \n\t\"x\" \r]")), Some("x"));
        assert_eq!(one_plain_string(raw(r#"[""]"#)), Some(""));
        // Everything else goes through the full parse (which reports counts and types).
        for t in [
            r#"["a","b"]"#,
            r#"["a\"b"]"#,
            r#"["a\u0041"]"#,
            "[1]",
            "[]",
            r#"[["a"]]"#,
            r#"[{"a":"b"}]"#,
        ] {
            assert_eq!(one_plain_string(raw(t)), None, "{t}");
        }
    }

    #[test]
    fn members_keep_body_order_and_decode_escaped_keys() {
        let (_, members) = parse_members(br#"{"b":1, "a\u0062":[2], "b":null}"#).unwrap();
        let got: Vec<_> = members
            .iter()
            .map(|m| (m.key.as_ref(), m.value.get()))
            .collect();
        assert_eq!(got, [("b", "1"), ("ab", "[2]"), ("b", "null")]);
    }

    #[test]
    fn integers_are_json_integers_only() {
        assert_eq!(raw_int(raw("5")), Some(5));
        assert_eq!(raw_int(raw("-0")), Some(0));
        assert_eq!(raw_int(raw("99999999999999999999")), Some(i64::MAX));
        assert_eq!(raw_int(raw("-99999999999999999999")), Some(i64::MIN));
        for t in ["5.0", "5e0", "\"5\"", "true", "null"] {
            assert_eq!(raw_int(raw(t)), None, "{t}");
        }
    }
}
