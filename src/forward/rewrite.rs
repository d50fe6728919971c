//! Byte-level rewriting of a JSON object's top-level members, for forwarding: a field set or removed is spliced
//! in by byte range; every other member keeps its position and exact bytes (a 15 MB image is never re-serialised).

use std::borrow::Cow;

use bytes::Bytes;

use crate::validate::Validated;
use crate::validate::members::parse_members;

impl Validated<'_> {
    /// True when forwarding needs a body other than the caller's (stripped fields, or a field to set that changes).
    pub fn needs_rewrite(&self, set: &[(&str, serde_json::Value)]) -> bool {
        !self.stripped.is_empty() || rewrite_plan(self.body(), set, &[]).is_some()
    }

    /// The body to forward: the stripped fields removed and `set` applied, everything else byte-for-byte.
    /// `original` must hold the same bytes as [`Validated::body`]; when nothing changes it is returned as is
    /// (a reference-count increment, no copy).
    pub fn forward_body(&self, original: &Bytes, set: &[(&str, serde_json::Value)]) -> Bytes {
        self.forward_body_without(original, set, &[])
    }

    /// [`forward_body`](Self::forward_body), with the fields of `remove` removed too.
    pub fn forward_body_without(
        &self,
        original: &Bytes,
        set: &[(&str, serde_json::Value)],
        remove: &[&str],
    ) -> Bytes {
        let mut all: Vec<&str> = self.stripped.iter().map(String::as_str).collect();
        all.extend_from_slice(remove);
        rewrite_shared(original, set, &all)
    }
}
/// Byte positions of one top-level member: `"key"` starts at `key_start`, its value spans `value_start..value_end`.
struct Span<'a> {
    key: Cow<'a, str>,
    key_start: usize,
    value_start: usize,
    value_end: usize,
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The members of a top-level object with their byte spans, plus the span of everything between the braces
/// (`inner_start..inner_end`). `None` when `body` is not a JSON object.
fn object_spans(body: &[u8]) -> Option<(usize, usize, Vec<Span<'_>>)> {
    let (text, members) = parse_members(body).ok()?;
    let base = text.as_ptr() as usize;
    let open = skip_ws(body, 0);
    if body.get(open) != Some(&b'{') {
        return None;
    }
    let mut cursor = open + 1;
    let mut spans = Vec::with_capacity(members.len());
    for (i, m) in members.into_iter().enumerate() {
        let raw = m.value.get();
        let value_start = (raw.as_ptr() as usize).checked_sub(base)?;
        let value_end = value_start.checked_add(raw.len())?;
        if value_end > body.len() {
            return None;
        }
        let mut k = skip_ws(body, cursor);
        if i > 0 {
            if body.get(k) != Some(&b',') {
                return None;
            }
            k = skip_ws(body, k + 1);
        }
        if body.get(k) != Some(&b'"') || k >= value_start {
            return None;
        }
        spans.push(Span {
            key: m.key,
            key_start: k,
            value_start,
            value_end,
        });
        cursor = value_end;
    }
    let inner_start = spans.first().map_or(open + 1, |s| s.key_start);
    let inner_end = spans.last().map_or(open + 1, |s| s.value_end);
    Some((inner_start, inner_end, spans))
}

/// The rewritten body, or `None` when nothing would change (or `body` is not a JSON object).
fn rewrite_plan(
    body: &[u8],
    set: &[(&str, serde_json::Value)],
    remove: &[&str],
) -> Option<Vec<u8>> {
    if set.is_empty() && remove.is_empty() {
        // Nothing to change: no need to scan (a 15 MB image) again.
        return None;
    }
    let (inner_start, inner_end, spans) = object_spans(body)?;
    let set_text: Vec<String> = set
        .iter()
        .map(|(_, v)| serde_json::to_string(v).unwrap_or_else(|_| "null".into()))
        .collect();
    let mut applied = vec![false; set.len()];
    let mut changed = false;
    let mut out = Vec::with_capacity(body.len() + 64);
    out.extend_from_slice(&body[..inner_start]);
    let mut sep: Option<&[u8]> = None; // the separator that followed the last member written, in the original
    let mut wrote_any = false;
    for (i, s) in spans.iter().enumerate() {
        let replacement = set.iter().position(|(k, _)| *k == s.key);
        if replacement.is_none() && remove.iter().any(|k| *k == s.key) {
            changed = true;
            continue;
        }
        if wrote_any {
            out.extend_from_slice(sep.unwrap_or(b","));
        }
        out.extend_from_slice(&body[s.key_start..s.value_start]);
        let old = &body[s.value_start..s.value_end];
        match replacement {
            Some(j) => {
                applied[j] = true;
                let new = set_text[j].as_bytes();
                changed |= new != old;
                out.extend_from_slice(new);
            }
            None => out.extend_from_slice(old),
        }
        sep = spans
            .get(i + 1)
            .map(|next| &body[s.value_end..next.key_start]);
        wrote_any = true;
    }
    for (j, (key, _)) in set.iter().enumerate() {
        if applied[j] || set[..j].iter().any(|(k, _)| k == key) {
            continue;
        }
        changed = true;
        if wrote_any {
            out.push(b',');
        }
        out.extend_from_slice(
            serde_json::to_string(key)
                .unwrap_or_else(|_| "\"\"".into())
                .as_bytes(),
        );
        out.push(b':');
        out.extend_from_slice(set_text[j].as_bytes());
        wrote_any = true;
    }
    out.extend_from_slice(&body[inner_end..]);
    changed.then_some(out)
}

/// `body` with only the named top-level fields changed: each `set` field's value replaced (or the field appended
/// at the end when absent), each `remove` field dropped (`set` wins when a name is in both). Every other member
/// keeps its position and exact bytes, separators and whitespace included; values are spliced by byte range, never
/// re-serialised. When nothing changes — or `body` is not a JSON object — the input bytes are returned as they are.
pub fn rewrite(body: &[u8], set: &[(&str, serde_json::Value)], remove: &[&str]) -> Bytes {
    match rewrite_plan(body, set, remove) {
        Some(out) => Bytes::from(out),
        None => Bytes::copy_from_slice(body),
    }
}

/// [`rewrite`] for a body already in `Bytes`: when nothing changes, `body` itself is returned (no copy).
pub fn rewrite_shared(body: &Bytes, set: &[(&str, serde_json::Value)], remove: &[&str]) -> Bytes {
    match rewrite_plan(body, set, remove) {
        Some(out) => Bytes::from(out),
        None => body.clone(),
    }
}

impl Validated<'_> {
    /// The part of a body forwarded while it was read (`crate::forward::stream`) that is sent last: the body made
    /// from the skeleton [`Validated`] was made of — stripped fields and `remove` removed, `set` applied, every
    /// other byte as sent — from `cut` (where its `images` value ended) on, then spaces up to `room` bytes. `None`
    /// when a change falls before `cut` (already sent) or the part does not fit in `room`: nothing may be sent
    /// then.
    pub fn streamed_tail(
        &self,
        set: &[(&str, serde_json::Value)],
        remove: &[&str],
        cut: usize,
        room: usize,
    ) -> Option<Bytes> {
        let mut all: Vec<&str> = self.stripped.iter().map(String::as_str).collect();
        all.extend_from_slice(remove);
        let body = self.body();
        let changed = rewrite(body, set, &all);
        if changed.get(..cut)? != body.get(..cut)? {
            return None;
        }
        let tail = &changed[cut..];
        let mut out = Vec::with_capacity(room);
        out.extend_from_slice(tail);
        out.resize(
            room.checked_sub(tail.len()).map(|pad| tail.len() + pad)?,
            b' ',
        );
        Some(Bytes::from(out))
    }
}

/// How much longer than the caller's body a forwarded body may get with `set` applied: each field added as
/// `,"<name>":<value>` at most.
pub fn streamed_growth(set: &[(&str, serde_json::Value)]) -> usize {
    set.iter()
        .map(|(name, value)| name.len() + 4 + value.to_string().len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn rewrite_changes_only_the_named_fields_and_keeps_a_1_mb_image_byte_identical() {
        let image = format!("data:image/png;base64,{}", "QUFB".repeat(262_144)); // 1 MiB of base64
        let original = format!(
            "{{ \"model\" : \"viduq3-pro\",\n  \"images\": [\"{image}\"],\t\"prompt\":\"a \\u00e9 cat\", \"off_peak\": false, \"zzz\": {{\"a\": [1, 2]}} }}\n"
        );
        let out = rewrite(
            original.as_bytes(),
            &[("off_peak", json!(true)), ("audio", json!(false))],
            &["zzz"],
        );
        let out = std::str::from_utf8(&out).unwrap();
        assert_eq!(
            out,
            format!(
                "{{ \"model\" : \"viduq3-pro\",\n  \"images\": [\"{image}\"],\t\"prompt\":\"a \\u00e9 cat\", \"off_peak\": true,\"audio\":false }}\n"
            )
        );
        assert!(out.contains(&image));
        let (_, members) = parse_members(out.as_bytes()).unwrap();
        assert_eq!(
            members.iter().map(|m| m.key.as_ref()).collect::<Vec<_>>(),
            ["model", "images", "prompt", "off_peak", "audio"]
        );
    }

    #[test]
    fn rewrite_returns_the_input_unchanged_when_nothing_changes() {
        let original =
            Bytes::from_static(b"{\"model\":\"viduq2\", \"off_peak\" : true,\"images\":[\"x\"]}");
        assert_eq!(rewrite(&original, &[], &[]), original);
        assert_eq!(
            rewrite(&original, &[("off_peak", json!(true))], &["absent"]),
            original
        );
        let shared = rewrite_shared(&original, &[("off_peak", json!(true))], &[]);
        assert_eq!(shared.as_ptr(), original.as_ptr(), "no copy when unchanged");
        assert_eq!(
            rewrite(b"not json", &[("a", json!(1))], &[]),
            Bytes::from_static(b"not json")
        );
    }

    #[test]
    fn rewrite_handles_first_last_only_and_empty_objects() {
        let r = |b: &str, set: &[(&str, Value)], rm: &[&str]| {
            String::from_utf8(rewrite(b.as_bytes(), set, rm).to_vec()).unwrap()
        };
        assert_eq!(
            r(r#"{"a":1, "b":2, "c":3}"#, &[], &["a"]),
            r#"{"b":2, "c":3}"#
        );
        assert_eq!(
            r(r#"{"a":1, "b":2, "c":3}"#, &[], &["c"]),
            r#"{"a":1, "b":2}"#
        );
        assert_eq!(
            r(r#"{"a":1, "b":2, "c":3}"#, &[], &["b"]),
            r#"{"a":1, "c":3}"#
        );
        assert_eq!(r(r#"{"a":1}"#, &[], &["a"]), "{}");
        assert_eq!(r(r#" { } "#, &[("a", json!("x"))], &[]), r#" {"a":"x" } "#);
        assert_eq!(
            r(r#"{"a":1,"a":2}"#, &[("a", json!(3))], &[]),
            r#"{"a":3,"a":3}"#
        );
        assert_eq!(r(r#"{"a":1}"#, &[("a", json!(2))], &["a"]), r#"{"a":2}"#);
        assert_eq!(
            r(r#"{"d\u0061":1}"#, &[("da", json!(2))], &[]),
            r#"{"d\u0061":2}"#
        );
        assert_eq!(
            r(r#"{"a":null}"#, &[("a", json!(true))], &[]),
            r#"{"a":true}"#
        );
        assert_eq!(
            r(r#"{"a":1}"#, &[("b\"q", json!(1))], &[]),
            r#"{"a":1,"b\"q":1}"#
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Objects with keys that collide with the ones set and removed, and values of every JSON type.
        fn object() -> impl Strategy<Value = serde_json::Map<String, Value>> {
            let key = prop_oneof![
                Just("model".to_owned()),
                Just("off_peak".to_owned()),
                ".{0,6}"
            ];
            let value = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                ".{0,12}".prop_map(Value::String),
                prop::collection::vec(any::<u8>().prop_map(Value::from), 0..3)
                    .prop_map(Value::Array),
            ];
            prop::collection::vec((key, value), 0..8).prop_map(|m| m.into_iter().collect())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn a_rewrite_of_any_object_is_that_object_with_the_change(obj in object()) {
                let body = serde_json::to_vec(&Value::Object(obj.clone())).unwrap();
                let out = rewrite(&body, &[("off_peak", json!(true))], &["model"]);
                let mut expected = obj;
                expected.remove("model");
                expected.insert("off_peak".into(), json!(true));
                let got: Value = serde_json::from_slice(&out).unwrap();
                prop_assert_eq!(got, Value::Object(expected));
            }
        }
    }
}
