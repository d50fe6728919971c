//! Parsing and validation of an img2video request body against the model catalog (every violation at once), the
//! effective parameters (model defaults applied), and byte-level rewriting of top-level fields for forwarding.
//!
//! # How a body is read
//! The top level is parsed into borrowed `(key, &RawValue)` members in body order: nothing is copied, so a 15 MB
//! image string stays where it is (a key or string with JSON escapes is decoded into an owned copy; e.g. base64
//! sent with `\/` escapes is copied once). Each known field is then type-checked strictly: integers must be JSON
//! integers (`"5"` and `5.0` are `WrongType`), booleans JSON booleans, strings JSON strings. A JSON `null` counts as
//! absent (and is forwarded unchanged), except that an unknown field is unknown whatever its value. A known field
//! sent twice is a `Duplicate` violation (which of the two would Vidu use? the caller must say once). An empty
//! string for `wm_url`, `callback_url` or `meta_data` counts as unset (Vidu's docs: "if empty, …").
//!
//! The per-field rules then run through `validator` (derive on [`Fields`], with the catalog entry of the requested
//! model as context for the model-dependent rules and the off-peak/audio cross-field rule). `images[0]` is checked
//! by [`crate::validate::image::check_image`] directly (validator's error values would copy the image string). When
//! `model` is missing or not in the catalog, the model-dependent rules (prompt length, duration, resolution,
//! off-peak/audio) are skipped rather than reported against a guess.
//!
//! # Reasons
//! Each entry of `fields` has a fine `reason`; the envelope's top-level `reason` is Vidu's, the first present in
//! this order (DESIGN §9): `FieldLacking`, `FieldItemCountOutOfRange`, `FieldUnwanted`, `ImageFormatInvalid`,
//! `FieldInvalid`.
//!
//! | field `reason`    | top-level `reason`         | when |
//! | ----------------- | -------------------------- | ---- |
//! | `Missing`         | `FieldLacking`             | `model` or `images` absent or `null` |
//! | `CountOutOfRange` | `FieldItemCountOutOfRange` | `images` holds 0 or ≥ 2 entries |
//! | `Unknown`         | `FieldUnwanted`            | a field img2video does not know (`validation.unknown_fields = "reject"`) |
//! | `ImageInvalid`    | `ImageFormatInvalid`       | `images[0]`: scheme, data-URI media type, base64, real format, aspect ratio, size |
//! | `WrongType`       | `FieldInvalid`             | wrong JSON type (`"duration": "5"`, `5.0`, `"off_peak": 1`, `meta_data` as an object …) |
//! | `OutOfRange`      | `FieldInvalid`             | `duration` outside the model's range, `seed` outside 0..=2147483647, `wm_position` outside 1..=4 |
//! | `NotInCatalog`    | `FieldInvalid`             | `model` not in this gateway's catalog |
//! | `NotAllowed`      | `FieldInvalid`             | `resolution` not offered by the model; `movement_amplitude`, `audio_type` not one of their values |
//! | `TooLong`         | `FieldInvalid`             | `prompt` over the model's `prompt_max_chars`, `payload` over 1,048,576 characters |
//! | `InvalidUrl`      | `FieldInvalid`             | `wm_url`, `callback_url` not an absolute http(s) URL with a host |
//! | `InvalidJson`     | `FieldInvalid`             | `meta_data` not a string holding a JSON object |
//! | `Conflict`        | `FieldInvalid`             | `off_peak: true` with audio on (explicit or the model's default) where the model cannot do both |
//! | `Duplicate`       | `FieldInvalid`             | a known field sent more than once |
//!
//! A body that is not UTF-8, not JSON or not an object is a `BadRequest` with no `fields`.

pub mod image;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::Serialize;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use validator::{Validate, ValidateArgs, ValidationError};

use crate::catalog::pricing::{Decimal, EstimateInput, estimate};
use crate::config::{ModelSpec, Settings, UnknownFields};
use crate::error::FieldViolation;
use crate::validate::image::{ImageInfo, check_image};

/// The fields of Vidu's img2video body, in the docs' order.
pub const KNOWN_FIELDS: &[&str] = &[
    "model",
    "images",
    "prompt",
    "duration",
    "seed",
    "resolution",
    "movement_amplitude",
    "payload",
    "off_peak",
    "watermark",
    "wm_position",
    "wm_url",
    "meta_data",
    "callback_url",
    "audio",
    "voice_id",
    "is_rec",
    "bgm",
    "audio_type",
];

/// `payload` limit, in characters.
pub const PAYLOAD_MAX_CHARS: u64 = 1_048_576;
/// Largest `seed` clients send (Vidu: 0 or absent = random).
pub const SEED_MAX: i64 = 2_147_483_647;
pub const MOVEMENT_AMPLITUDES: &[&str] = &["auto", "small", "medium", "large"];
pub const AUDIO_TYPES: &[&str] = &["all", "speech_only", "sound_effect_only"];
/// Vidu's default watermark position (bottom-right).
pub const DEFAULT_WM_POSITION: u8 = 3;

/// Why a body was refused: the envelope's top-level `reason` and `message`, and every field problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
    pub fields: Vec<FieldViolation>,
}

/// A valid request: its effective parameters, the image check's result, and the caller's bytes.
#[derive(Clone, Debug)]
pub struct Validated<'a> {
    pub params: Effective,
    /// Unknown fields to remove before forwarding (`validation.unknown_fields = "strip"`), in body order.
    pub stripped: Vec<String>,
    pub image: ImageInfo,
    body: &'a [u8],
}

impl<'a> Validated<'a> {
    /// The caller's body, exactly as received.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// True when forwarding needs a body other than the caller's (stripped fields, or a field to set that changes).
    pub fn needs_rewrite(&self, set: &[(&str, serde_json::Value)]) -> bool {
        !self.stripped.is_empty() || rewrite_plan(self.body, set, &[]).is_some()
    }

    /// The body to forward: the stripped fields removed and `set` applied, everything else byte-for-byte.
    /// `original` must hold the same bytes as [`Validated::body`]; when nothing changes it is returned as is
    /// (a reference-count increment, no copy).
    pub fn forward_body(&self, original: &Bytes, set: &[(&str, serde_json::Value)]) -> Bytes {
        let remove: Vec<&str> = self.stripped.iter().map(String::as_str).collect();
        rewrite_shared(original, set, &remove)
    }
}

/// The request as Vidu will run it: the caller's values, else the model's defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Effective {
    pub model: String,
    pub duration: u32,
    pub resolution: String,
    pub audio: bool,
    pub off_peak: bool,
    pub is_rec: bool,
    /// 0 = random.
    pub seed: u32,
    pub movement_amplitude: String,
    pub watermark: bool,
    pub wm_position: u8,
    pub bgm: bool,
    /// `None`: not sent (Vidu's default applies).
    pub audio_type: Option<String>,
    /// Length of the prompt in characters (the prompt itself is not kept: it is not logged, DESIGN §7).
    pub prompt_chars: usize,
    /// The caller's `callback_url`, when set (the gateway relays Vidu's callbacks to it).
    pub callback_url: Option<String>,
    /// `None`: not sent (Vidu recommends a voice).
    pub voice_id: Option<String>,
    /// The fields whose value came from a default rather than the body.
    pub defaulted: Vec<&'static str>,
}

impl Effective {
    /// The credit estimate of DESIGN §9 for this request as it stands.
    ///
    /// Uses the catalog of `settings`, which should be the snapshot the request was validated against; a model or
    /// resolution missing from its price table counts as 0 credits.
    pub fn estimate(&self, settings: &Settings) -> u64 {
        self.estimate_with_off_peak(settings, self.off_peak)
    }

    /// The estimate of the same request with `off_peak` set to `off_peak` (the quote shows both).
    pub fn estimate_with_off_peak(&self, settings: &Settings, off_peak: bool) -> u64 {
        estimate(&self.estimate_input(settings, off_peak))
    }

    /// What [`estimate`] is computed from, with `off_peak` set to `off_peak`.
    pub fn estimate_input(&self, settings: &Settings, off_peak: bool) -> EstimateInput {
        let price = |table: Option<&BTreeMap<String, Decimal>>| {
            table
                .and_then(|t| t.get(&self.resolution))
                .copied()
                .unwrap_or_default()
        };
        let spec = settings.models.get(&self.model);
        EstimateInput {
            base: price(spec.map(|s| &s.credits.base)),
            per_second: price(spec.map(|s| &s.credits.per_second)),
            duration_secs: self.duration,
            off_peak,
            off_peak_factor: settings.pricing.off_peak_factor,
            is_rec: self.is_rec,
            recommended_prompt_credits: settings.pricing.recommended_prompt_credits,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Top-level parsing: borrowed members in body order.

/// One top-level member: its decoded key and its raw value (a slice of the body).
struct Member<'a> {
    key: Cow<'a, str>,
    value: &'a RawValue,
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

fn parse_members(body: &[u8]) -> Result<(&str, Vec<Member<'_>>), String> {
    let text = std::str::from_utf8(body).map_err(|e| {
        format!(
            "the body is not UTF-8 (invalid byte at offset {}): send a UTF-8 JSON object such as {EXAMPLE_BODY}",
            e.valid_up_to()
        )
    })?;
    let members = serde_json::from_str::<Members<'_>>(text).map_err(|e| {
        format!("the body is not a JSON object ({e}): send a JSON object such as {EXAMPLE_BODY}")
    })?;
    Ok((text, members.0))
}

/// The JSON type of a raw value, from its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

fn kind(raw: &RawValue) -> Kind {
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
fn describe(raw: &RawValue) -> String {
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

fn preview(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => Cow::Borrowed(s),
        Some((i, _)) => Cow::Owned(format!("{}…", &s[..i])),
    }
}

/// The string a raw JSON string holds: borrowed when it has no escapes.
fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
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
fn one_plain_string(array: &RawValue) -> Option<&str> {
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
fn raw_int(raw: &RawValue) -> Option<i64> {
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

fn raw_bool(raw: &RawValue) -> Option<bool> {
    match raw.get() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Field rules, through `validator`.

/// What the model-dependent rules need: the requested model's catalog entry (when it is in the catalog), the
/// catalog's names for messages, and whether the cross-field rule has usable inputs.
struct Ctx<'v_a> {
    model: Option<(&'v_a str, &'v_a ModelSpec)>,
    catalog: &'v_a BTreeMap<String, ModelSpec>,
    /// `off_peak` and `audio` were both well-typed (else the cross-field rule would report a cascade).
    cross_field_inputs_ok: bool,
}

/// The typed known fields (absent, `null`, ill-typed and duplicated ones are `None`), checked by `validator`.
#[derive(Debug, Default, Validate)]
#[validate(context = "Ctx<'v_a>")]
#[validate(schema(
    function = "check_off_peak_audio",
    use_context,
    skip_on_field_errors = false
))]
struct Fields<'b> {
    #[validate(custom(function = "check_model", use_context))]
    model: Option<&'b str>,
    #[validate(custom(function = "check_prompt", use_context))]
    prompt: Option<&'b str>,
    #[validate(custom(function = "check_duration", use_context))]
    duration: Option<i64>,
    #[validate(range(min = 0, max = 2_147_483_647))]
    seed: Option<i64>,
    #[validate(custom(function = "check_resolution", use_context))]
    resolution: Option<&'b str>,
    #[validate(custom(function = "check_movement_amplitude"))]
    movement_amplitude: Option<&'b str>,
    /// `length` counts characters for strings.
    #[validate(length(max = 1_048_576))]
    payload: Option<&'b str>,
    off_peak: Option<bool>,
    watermark: Option<bool>,
    #[validate(range(min = 1, max = 4))]
    wm_position: Option<i64>,
    #[validate(custom(function = "check_http_url"))]
    wm_url: Option<&'b str>,
    #[validate(custom(function = "check_meta_data"))]
    meta_data: Option<&'b str>,
    #[validate(custom(function = "check_http_url"))]
    callback_url: Option<&'b str>,
    audio: Option<bool>,
    voice_id: Option<&'b str>,
    is_rec: Option<bool>,
    bgm: Option<bool>,
    #[validate(custom(function = "check_audio_type"))]
    audio_type: Option<&'b str>,
}

fn violation(code: &'static str, message: String) -> ValidationError {
    ValidationError::new(code).with_message(Cow::Owned(message))
}

fn model_names(catalog: &BTreeMap<String, ModelSpec>) -> String {
    catalog
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_model(model: &str, ctx: &Ctx<'_>) -> Result<(), ValidationError> {
    if ctx.model.is_some() {
        return Ok(());
    }
    Err(violation(
        "NotInCatalog",
        format!(
            "unknown model \"{}\": this gateway's catalog has {}",
            preview(model, 64),
            model_names(ctx.catalog)
        ),
    ))
}

fn check_prompt(prompt: &str, ctx: &Ctx<'_>) -> Result<(), ValidationError> {
    let Some((name, spec)) = ctx.model else {
        return Ok(());
    };
    // Count no further than needed: one past the limit proves it too long.
    let chars = prompt.chars().take(spec.prompt_max_chars + 1).count();
    if chars <= spec.prompt_max_chars {
        return Ok(());
    }
    Err(violation(
        "TooLong",
        format!(
            "{name} allows at most {} characters in prompt, got {}: shorten it",
            spec.prompt_max_chars,
            prompt.chars().count()
        ),
    ))
}

fn check_duration(duration: i64, ctx: &Ctx<'_>) -> Result<(), ValidationError> {
    let Some((name, spec)) = ctx.model else {
        return Ok(());
    };
    let r = spec.durations;
    if (i64::from(r.min)..=i64::from(r.max)).contains(&duration) {
        return Ok(());
    }
    let allowed = if r.min == r.max {
        format!("only {} seconds", r.min)
    } else {
        format!("{}..={} seconds", r.min, r.max)
    };
    Err(violation(
        "OutOfRange",
        format!("{name} allows {allowed}, got {duration}"),
    ))
}

fn check_resolution(resolution: &str, ctx: &Ctx<'_>) -> Result<(), ValidationError> {
    let Some((name, spec)) = ctx.model else {
        return Ok(());
    };
    if spec.resolutions.iter().any(|r| r == resolution) {
        return Ok(());
    }
    Err(violation(
        "NotAllowed",
        format!(
            "{name} allows resolution {}, got \"{}\"",
            spec.resolutions.join(", "),
            preview(resolution, 32)
        ),
    ))
}

fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<(), ValidationError> {
    if allowed.contains(&value) {
        return Ok(());
    }
    Err(violation(
        "NotAllowed",
        format!(
            "{field} must be one of {}, got \"{}\"",
            allowed.join(", "),
            preview(value, 32)
        ),
    ))
}

fn check_movement_amplitude(value: &str) -> Result<(), ValidationError> {
    one_of("movement_amplitude", value, MOVEMENT_AMPLITUDES)
}

fn check_audio_type(value: &str) -> Result<(), ValidationError> {
    one_of("audio_type", value, AUDIO_TYPES)
}

/// An absolute http(s) URL with a host (an empty string counts as unset).
pub fn is_http_url(value: &str) -> bool {
    if value.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return false;
    }
    url::Url::parse(value).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    })
}

fn check_http_url(value: &str) -> Result<(), ValidationError> {
    if value.is_empty() || is_http_url(value) {
        return Ok(());
    }
    Err(violation(
        "InvalidUrl",
        format!(
            "expected an absolute http(s) URL with a host, such as https://example.com/path, got \"{}\"",
            preview(value, 64)
        ),
    ))
}

fn check_meta_data(value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Ok(());
    }
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(value) {
        Ok(_) => Ok(()),
        Err(e) => Err(violation(
            "InvalidJson",
            format!(
                "meta_data must be a string holding a JSON object, such as \"{{\\\"Label\\\": \\\"your_label\\\"}}\"; this one does not parse as one ({e})"
            ),
        )),
    }
}

fn check_off_peak_audio(fields: &Fields<'_>, ctx: &Ctx<'_>) -> Result<(), ValidationError> {
    let Some((name, spec)) = ctx.model else {
        return Ok(());
    };
    if !ctx.cross_field_inputs_ok || fields.off_peak != Some(true) || spec.off_peak_with_audio {
        return Ok(());
    }
    let (audio, why) = match fields.audio {
        Some(a) => (a, "you sent \"audio\": true"),
        None => (spec.audio_default, "audio is on by default for this model"),
    };
    if !audio {
        return Ok(());
    }
    Err(violation(
        "Conflict",
        format!(
            "send \"audio\": false to use off_peak with {name} (off-peak cannot run with audio; {why}), or drop \"off_peak\""
        ),
    ))
}

// ---------------------------------------------------------------------------------------------------------------
// Validation.

/// One violation and where its field sits in the body (for a stable, body-ordered report).
struct Found {
    /// 1-based position of the field's member in the body; 0 for a missing field.
    order: usize,
    v: FieldViolation,
}

fn found(order: usize, field: &str, reason: &'static str, message: String) -> Found {
    Found {
        order,
        v: FieldViolation {
            field: field.to_owned(),
            reason,
            message,
        },
    }
}

/// The top-level Vidu reason of a per-field reason.
pub fn top_level_reason(field_reason: &str) -> &'static str {
    match field_reason {
        "Missing" => "FieldLacking",
        "CountOutOfRange" => "FieldItemCountOutOfRange",
        "Unknown" => "FieldUnwanted",
        "ImageInvalid" => "ImageFormatInvalid",
        _ => "FieldInvalid",
    }
}

/// The order in which top-level reasons win (DESIGN §9).
const PRECEDENCE: &[&str] = &[
    "FieldLacking",
    "FieldItemCountOutOfRange",
    "FieldUnwanted",
    "ImageFormatInvalid",
    "FieldInvalid",
];

/// The per-field reasons a validator error code may carry (custom validators set them; built-ins are mapped).
fn field_reason(code: &str) -> &'static str {
    match code {
        "range" => "OutOfRange",
        "length" => "TooLong",
        "NotInCatalog" => "NotInCatalog",
        "TooLong" => "TooLong",
        "OutOfRange" => "OutOfRange",
        "NotAllowed" => "NotAllowed",
        "InvalidUrl" => "InvalidUrl",
        "InvalidJson" => "InvalidJson",
        "Conflict" => "Conflict",
        _ => "Invalid",
    }
}

const INTEGER: &str = "an integer";
const BOOLEAN: &str = "a boolean (true or false)";
const JSON_OBJECT_STRING: &str = "a string holding a JSON object";

fn expected_type_message(field: &str, expected: &str, raw: &RawValue) -> String {
    let got = describe(raw);
    let integer = expected == INTEGER;
    let hint = match raw_str(raw) {
        Some(s) if integer && s.trim().parse::<i64>().is_ok() => {
            format!(": send {} without quotes", s.trim())
        }
        Some(s) if expected == BOOLEAN && (s == "true" || s == "false") => {
            format!(": send {s} without quotes")
        }
        None if integer && kind(raw) == Kind::Number => ": send a whole number such as 5".into(),
        None if expected == JSON_OBJECT_STRING && kind(raw) == Kind::Object => {
            r#": send the object serialised as a JSON string, e.g. "{\"Label\": \"x\"}""#.into()
        }
        _ => String::new(),
    };
    format!("{field}: expected {expected}, got {got}{hint}")
}

/// Validates `body` against the catalog of `settings`: the effective parameters, or every violation at once.
pub fn validate<'a>(body: &'a [u8], settings: &Settings) -> Result<Validated<'a>, Rejection> {
    let (_, members) = parse_members(body).map_err(|message| Rejection {
        reason: "BadRequest",
        message,
        fields: Vec::new(),
    })?;

    let mut problems: Vec<Found> = Vec::new();
    let mut stripped: Vec<String> = Vec::new();

    // Index each known field's single occurrence; report duplicates and unknown fields.
    let mut slots: [Option<(usize, &RawValue)>; KNOWN_FIELDS.len()] = [None; KNOWN_FIELDS.len()];
    let mut counts = [0usize; KNOWN_FIELDS.len()];
    let mut first_seen = [usize::MAX; KNOWN_FIELDS.len()];
    // Positions are 1-based: 0 sorts missing fields first.
    for (pos, m) in (1..).zip(members.iter()) {
        let Some(k) = KNOWN_FIELDS.iter().position(|f| *f == m.key) else {
            match settings.validation.unknown_fields {
                UnknownFields::Reject => problems.push(found(
                    pos,
                    &m.key,
                    "Unknown",
                    format!(
                        "unknown field \"{}\": img2video accepts {}; remove it",
                        preview(&m.key, 64),
                        KNOWN_FIELDS.join(", ")
                    ),
                )),
                UnknownFields::Strip => {
                    if !stripped.iter().any(|s| *s == m.key) {
                        stripped.push(m.key.clone().into_owned());
                    }
                }
            }
            continue;
        };
        counts[k] += 1;
        if first_seen[k] == usize::MAX {
            first_seen[k] = pos;
        }
        if kind(m.value) != Kind::Null {
            slots[k] = Some((pos, m.value));
        }
    }
    for (k, &n) in counts.iter().enumerate() {
        if n > 1 {
            let name = KNOWN_FIELDS[k];
            problems.push(found(
                first_seen[k],
                name,
                "Duplicate",
                format!("{name} appears {n} times: send it once"),
            ));
            slots[k] = None;
        }
    }
    let slot = |name: &str| {
        KNOWN_FIELDS
            .iter()
            .position(|f| *f == name)
            .and_then(|k| slots[k])
    };
    let duplicated = |name: &str| {
        KNOWN_FIELDS
            .iter()
            .position(|f| *f == name)
            .is_some_and(|k| counts[k] > 1)
    };

    // Strict JSON types.
    let mut strings: BTreeMap<&'static str, Cow<'a, str>> = BTreeMap::new();
    let mut ints: BTreeMap<&'static str, i64> = BTreeMap::new();
    let mut bools: BTreeMap<&'static str, bool> = BTreeMap::new();
    for &name in KNOWN_FIELDS {
        let Some((i, raw)) = slot(name) else { continue };
        match name {
            "images" => {}
            "duration" | "seed" | "wm_position" => match raw_int(raw) {
                Some(v) => {
                    ints.insert(name, v);
                }
                None => problems.push(found(
                    i,
                    name,
                    "WrongType",
                    expected_type_message(name, INTEGER, raw),
                )),
            },
            "off_peak" | "watermark" | "audio" | "is_rec" | "bgm" => match raw_bool(raw) {
                Some(v) => {
                    bools.insert(name, v);
                }
                None => problems.push(found(
                    i,
                    name,
                    "WrongType",
                    expected_type_message(name, BOOLEAN, raw),
                )),
            },
            _ => match raw_str(raw) {
                Some(v) => {
                    strings.insert(name, v);
                }
                None => {
                    let expected = if name == "meta_data" {
                        JSON_OBJECT_STRING
                    } else {
                        "a string"
                    };
                    problems.push(found(
                        i,
                        name,
                        "WrongType",
                        expected_type_message(name, expected, raw),
                    ));
                }
            },
        }
    }

    // Required fields.
    let model_names_list = model_names(&settings.models);
    if slot("model").is_none() && !duplicated("model") {
        problems.push(found(
            0,
            "model",
            "Missing",
            format!("model is required: one of {model_names_list}"),
        ));
    }

    // images: exactly one string, checked without decoding it.
    let mut image: Option<ImageInfo> = None;
    match slot("images") {
        None if duplicated("images") => {}
        None => problems.push(found(
            0,
            "images",
            "Missing",
            "images is required: an array with one http(s) URL or data:image/<png|jpeg|webp>;base64,... URI".into(),
        )),
        Some((i, raw)) if kind(raw) != Kind::Array => problems.push(found(
            i,
            "images",
            "WrongType",
            format!(
                "images: expected an array with one image, got {}: wrap it as \"images\": [\"...\"]",
                describe(raw)
            ),
        )),
        Some((i, raw)) => match one_plain_string(raw) {
            Some(s) => match check_image(s) {
                Ok(info) => image = Some(info),
                Err(message) => problems.push(found(i, "images[0]", "ImageInvalid", message)),
            },
            None => match serde_json::from_str::<Vec<&RawValue>>(raw.get()) {
                Ok(items) if items.len() != 1 => problems.push(found(
                    i,
                    "images",
                    "CountOutOfRange",
                    format!("images must hold exactly 1 image, got {}", items.len()),
                )),
                Ok(items) => match items.first().and_then(|r| raw_str(r)) {
                    Some(s) => match check_image(&s) {
                        Ok(info) => image = Some(info),
                        Err(message) => {
                            problems.push(found(i, "images[0]", "ImageInvalid", message))
                        }
                    },
                    None => {
                        let got = items.first().map(|r| describe(r)).unwrap_or_default();
                        problems.push(found(
                            i,
                            "images[0]",
                            "WrongType",
                            format!(
                                "images[0]: expected a string (an http(s) URL or a data URI), got {got}"
                            ),
                        ));
                    }
                },
                // Unreachable for a value serde_json already parsed as an array; reported rather than assumed.
                Err(e) => problems.push(found(
                    i,
                    "images",
                    "WrongType",
                    format!("images: expected an array of strings ({e})"),
                )),
            },
        },
    }

    // Field rules through validator, with the requested model's catalog entry as context.
    let s = |name: &str| strings.get(name).map(|c| c.as_ref());
    let model = s("model").and_then(|m| settings.models.get_key_value(m));
    let fields = Fields {
        model: s("model"),
        prompt: s("prompt"),
        duration: ints.get("duration").copied(),
        seed: ints.get("seed").copied(),
        resolution: s("resolution"),
        movement_amplitude: s("movement_amplitude"),
        payload: s("payload"),
        off_peak: bools.get("off_peak").copied(),
        watermark: bools.get("watermark").copied(),
        wm_position: ints.get("wm_position").copied(),
        wm_url: s("wm_url"),
        meta_data: s("meta_data"),
        callback_url: s("callback_url"),
        audio: bools.get("audio").copied(),
        voice_id: s("voice_id"),
        is_rec: bools.get("is_rec").copied(),
        bgm: bools.get("bgm").copied(),
        audio_type: s("audio_type"),
    };
    let well_typed = |name: &str| slot(name).is_none_or(|_| bools.contains_key(name));
    let ctx = Ctx {
        model: model.map(|(k, v)| (k.as_str(), v)),
        catalog: &settings.models,
        cross_field_inputs_ok: well_typed("off_peak")
            && well_typed("audio")
            && !duplicated("audio")
            && !duplicated("off_peak"),
    };
    if let Err(errors) = fields.validate_with_args(&ctx) {
        for (name, list) in errors.field_errors() {
            for e in list {
                let field: &str = if name == "__all__" {
                    "off_peak"
                } else {
                    name.as_ref()
                };
                let order = slot(field).map_or(0, |(i, _)| i);
                let reason = field_reason(&e.code);
                let message = match &e.message {
                    Some(m) => m.to_string(),
                    None => builtin_message(field, &fields, slot(field).map(|(_, r)| r)),
                };
                problems.push(found(order, field, reason, message));
            }
        }
    }

    if !problems.is_empty() {
        return Err(rejection(problems));
    }
    let (Some((model_name, spec)), Some(image)) = (model, image) else {
        // Both are present whenever there is no problem; kept as a refusal rather than a panic.
        return Err(Rejection {
            reason: "FieldLacking",
            message: "invalid fields: model, images".into(),
            fields: Vec::new(),
        });
    };
    Ok(Validated {
        params: effective(model_name, spec, &fields),
        stripped,
        image,
        body,
    })
}

/// Messages for validator's built-in rules (custom rules carry their own).
fn builtin_message(field: &str, fields: &Fields<'_>, raw: Option<&RawValue>) -> String {
    let got = raw
        .map(|r| preview(r.get(), 32).into_owned())
        .unwrap_or_default();
    match field {
        "seed" => format!("seed must be an integer in 0..={SEED_MAX} (0 = random), got {got}"),
        "wm_position" => format!(
            "wm_position must be 1 (top-left), 2 (top-right), 3 (bottom-right) or 4 (bottom-left), got {got}"
        ),
        "payload" => format!(
            "payload may hold at most {PAYLOAD_MAX_CHARS} characters, got {}: shorten it",
            fields.payload.map_or(0, |p| p.chars().count())
        ),
        _ => format!("{field} is invalid"),
    }
}

fn rejection(mut problems: Vec<Found>) -> Rejection {
    problems.sort_by_key(|p| p.order);
    let reason = PRECEDENCE
        .iter()
        .copied()
        .find(|top| {
            problems
                .iter()
                .any(|p| top_level_reason(p.v.reason) == *top)
        })
        .unwrap_or("FieldInvalid");
    let mut names: Vec<&str> = Vec::new();
    for p in &problems {
        if !names.contains(&p.v.field.as_str()) {
            names.push(&p.v.field);
        }
    }
    // Clients that log only `message` see the fix too: the first problem of the top-level reason, in full.
    let first = problems
        .iter()
        .find(|p| top_level_reason(p.v.reason) == reason)
        .or(problems.first())
        .map_or("", |p| p.v.message.as_str());
    let message = match names.len() {
        1 => format!("invalid field: {} — {first}", names[0]),
        n => format!(
            "invalid fields: {} — {first} (and {} more in metadata.fields)",
            names.join(", "),
            n - 1
        ),
    };
    Rejection {
        reason,
        message,
        fields: problems.into_iter().map(|p| p.v).collect(),
    }
}

fn effective(model: &str, spec: &ModelSpec, f: &Fields<'_>) -> Effective {
    let mut defaulted = Vec::new();
    let mut or_default = |name: &'static str, present: bool| {
        if !present {
            defaulted.push(name);
        }
    };
    or_default("duration", f.duration.is_some());
    or_default("resolution", f.resolution.is_some());
    or_default("audio", f.audio.is_some());
    or_default("off_peak", f.off_peak.is_some());
    or_default("is_rec", f.is_rec.is_some());
    or_default("seed", f.seed.is_some());
    or_default("movement_amplitude", f.movement_amplitude.is_some());
    or_default("watermark", f.watermark.is_some());
    or_default("wm_position", f.wm_position.is_some());
    Effective {
        model: model.to_owned(),
        duration: f
            .duration
            .and_then(|d| u32::try_from(d).ok())
            .unwrap_or(spec.durations.default),
        resolution: f.resolution.unwrap_or(&spec.default_resolution).to_owned(),
        audio: f.audio.unwrap_or(spec.audio_default),
        off_peak: f.off_peak.unwrap_or(false),
        is_rec: f.is_rec.unwrap_or(false),
        seed: f.seed.and_then(|s| u32::try_from(s).ok()).unwrap_or(0),
        movement_amplitude: f.movement_amplitude.unwrap_or("auto").to_owned(),
        watermark: f.watermark.unwrap_or(false),
        wm_position: f
            .wm_position
            .and_then(|p| u8::try_from(p).ok())
            .unwrap_or(DEFAULT_WM_POSITION),
        bgm: f.bgm.unwrap_or(false),
        audio_type: f.audio_type.map(str::to_owned),
        prompt_chars: f.prompt.map_or(0, |p| p.chars().count()),
        callback_url: f.callback_url.filter(|u| !u.is_empty()).map(str::to_owned),
        voice_id: f.voice_id.map(str::to_owned),
        defaulted,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Byte-level rewriting.

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BUILTIN_CONFIG, Origin, load_from_str};
    use crate::validate::image::test_images;
    use serde_json::{Value, json};

    const IMG: &str = "https://example.com/first-frame.png";
    const MODELS: &[&str] = &["viduq1", "viduq2", "viduq3-turbo", "viduq3-pro"];

    fn settings() -> Settings {
        load_from_str(BUILTIN_CONFIG, Origin::Builtin, Default::default())
            .unwrap()
            .settings
    }

    fn strip_settings() -> Settings {
        let mut s = settings();
        s.validation.unknown_fields = UnknownFields::Strip;
        s
    }

    /// A minimal valid body for `model`, with `extra` merged in (a `Value::Null` in `extra` is sent as null).
    fn body(model: &str, extra: Value) -> Vec<u8> {
        let mut v = json!({"model": model, "images": [IMG]});
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        serde_json::to_vec(&v).unwrap()
    }

    fn check(model: &str, extra: Value) -> Result<Effective, Rejection> {
        let b = body(model, extra);
        validate(&b, &settings()).map(|v| v.params)
    }

    /// Refused with exactly one violation: returns (top-level reason, field, field reason, message).
    fn one(model: &str, extra: Value) -> (&'static str, String, &'static str, String) {
        let r =
            check(model, extra.clone()).expect_err(&format!("{model} {extra} should be refused"));
        assert_eq!(r.fields.len(), 1, "{r:?}");
        let f = &r.fields[0];
        (r.reason, f.field.clone(), f.reason, f.message.clone())
    }

    fn ok(model: &str, extra: Value) -> Effective {
        match check(model, extra.clone()) {
            Ok(e) => e,
            Err(r) => panic!("{model} {extra} should pass: {r:?}"),
        }
    }

    #[test]
    fn one_plain_string_takes_only_a_lone_string_without_escapes() {
        fn raw(t: &str) -> &RawValue {
            serde_json::from_str(t).unwrap()
        }
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
    fn an_escaped_image_string_is_still_read_and_checked() {
        let b = br#"{"model":"viduq2","images":["https:\/\/example.com\/a.png"]}"#;
        assert!(validate(b, &settings()).is_ok());
        let b = br#"{"model":"viduq2","images":["https://example.com/a.png", "https://example.com/b.png"]}"#;
        let e = validate(b, &settings()).err().unwrap();
        assert!(format!("{e:?}").contains("exactly 1 image"), "{e:?}");
    }

    #[test]
    fn a_minimal_body_passes_for_every_seed_model_with_its_defaults() {
        let s = settings();
        for &m in MODELS {
            let e = ok(m, json!({}));
            let spec = &s.models[m];
            assert_eq!(e.model, m);
            assert_eq!(e.duration, spec.durations.default);
            assert_eq!(e.resolution, spec.default_resolution);
            assert_eq!(e.audio, spec.audio_default);
            assert!(!e.off_peak && !e.is_rec && !e.watermark && !e.bgm);
            assert_eq!((e.seed, e.wm_position), (0, 3));
            assert_eq!(e.movement_amplitude, "auto");
            assert!(e.defaulted.contains(&"duration") && e.defaulted.contains(&"audio"));
        }
        assert!(ok("viduq3-pro", json!({})).audio);
        assert!(!ok("viduq2", json!({})).audio);
        assert_eq!(ok("viduq1", json!({})).resolution, "1080p");
    }

    #[test]
    fn explicit_values_become_the_effective_parameters() {
        let e = ok(
            "viduq3-turbo",
            json!({"duration": 16, "resolution": "1080p", "audio": false, "off_peak": true, "is_rec": true,
                   "seed": 42, "movement_amplitude": "large", "watermark": true, "wm_position": 1, "bgm": true,
                   "audio_type": "speech_only", "prompt": "海边的猫", "callback_url": "https://team.example/cb",
                   "voice_id": "v1"}),
        );
        assert_eq!(
            (
                e.duration,
                e.resolution.as_str(),
                e.audio,
                e.off_peak,
                e.is_rec
            ),
            (16, "1080p", false, true, true)
        );
        assert_eq!(
            (e.seed, e.wm_position, e.watermark, e.bgm),
            (42, 1, true, true)
        );
        assert_eq!(e.movement_amplitude, "large");
        assert_eq!(e.audio_type.as_deref(), Some("speech_only"));
        assert_eq!(e.prompt_chars, 4);
        assert_eq!(e.callback_url.as_deref(), Some("https://team.example/cb"));
        assert_eq!(e.voice_id.as_deref(), Some("v1"));
        assert!(e.defaulted.is_empty(), "{:?}", e.defaulted);
    }

    #[test]
    fn prompt_length_is_counted_in_characters_per_model() {
        for &m in MODELS {
            ok(m, json!({"prompt": "a".repeat(2000)}));
            ok(m, json!({"prompt": "字".repeat(2000)})); // 6000 bytes, 2000 characters
            ok(m, json!({"prompt": "🎬".repeat(2000)}));
            for p in ["a".repeat(2001), "字".repeat(2001)] {
                let (top, field, reason, msg) = one(m, json!({ "prompt": p }));
                assert_eq!(
                    (top, field.as_str(), reason),
                    ("FieldInvalid", "prompt", "TooLong")
                );
                assert_eq!(
                    msg,
                    format!("{m} allows at most 2000 characters in prompt, got 2001: shorten it")
                );
            }
        }
    }

    #[test]
    fn prompt_limit_is_the_catalog_value() {
        let mut s = settings();
        s.models.get_mut("viduq3-pro").unwrap().prompt_max_chars = 5000;
        let b = body("viduq3-pro", json!({"prompt": "x".repeat(5000)}));
        assert!(validate(&b, &s).is_ok());
        let b = body("viduq3-pro", json!({"prompt": "x".repeat(5001)}));
        assert_eq!(validate(&b, &s).unwrap_err().fields[0].reason, "TooLong");
    }

    #[test]
    fn payload_is_limited_to_1_048_576_characters() {
        ok("viduq2", json!({"payload": "p".repeat(1_048_576)}));
        ok("viduq2", json!({"payload": "é".repeat(1_048_576)})); // 2 MiB of bytes, 1,048,576 characters
        let (top, field, reason, msg) = one("viduq2", json!({"payload": "p".repeat(1_048_577)}));
        assert_eq!(
            (top, field.as_str(), reason),
            ("FieldInvalid", "payload", "TooLong")
        );
        assert_eq!(
            msg,
            "payload may hold at most 1048576 characters, got 1048577: shorten it"
        );
        let (.., reason, _) = one("viduq2", json!({"payload": "é".repeat(1_048_577)}));
        assert_eq!(reason, "TooLong");
        let (.., reason, msg) = one("viduq2", json!({"payload": {"a": 1}}));
        assert_eq!(
            (reason, msg.as_str()),
            ("WrongType", "payload: expected a string, got an object")
        );
    }

    #[test]
    fn duration_boundaries_for_every_model() {
        let s = settings();
        for &m in MODELS {
            let r = s.models[m].durations;
            assert_eq!(ok(m, json!({"duration": r.min})).duration, r.min);
            assert_eq!(ok(m, json!({"duration": r.max})).duration, r.max);
            for bad in [i64::from(r.min) - 1, i64::from(r.max) + 1] {
                let (top, field, reason, msg) = one(m, json!({ "duration": bad }));
                assert_eq!(
                    (top, field.as_str(), reason),
                    ("FieldInvalid", "duration", "OutOfRange")
                );
                let allowed = if r.min == r.max {
                    format!("only {} seconds", r.min)
                } else {
                    format!("{}..={} seconds", r.min, r.max)
                };
                assert_eq!(msg, format!("{m} allows {allowed}, got {bad}"));
            }
        }
        let (.., msg) = one("viduq2", json!({"duration": 12}));
        assert_eq!(msg, "viduq2 allows 1..=10 seconds, got 12");
        let b =
            br#"{"model":"viduq2","images":["https://e.x/a.png"],"duration":99999999999999999999}"#;
        let r = validate(b, &settings()).unwrap_err();
        assert_eq!(
            r.fields[0].message,
            "viduq2 allows 1..=10 seconds, got 9223372036854775807"
        );
    }

    #[test]
    fn viduq1_takes_5_seconds_at_1080p_only() {
        ok("viduq1", json!({"duration": 5, "resolution": "1080p"}));
        for d in [1, 4, 6, 8, 10] {
            let (.., msg) = one("viduq1", json!({ "duration": d }));
            assert_eq!(msg, format!("viduq1 allows only 5 seconds, got {d}"));
        }
        for r in ["540p", "720p"] {
            let (top, field, reason, msg) = one("viduq1", json!({ "resolution": r }));
            assert_eq!(
                (top, field.as_str(), reason),
                ("FieldInvalid", "resolution", "NotAllowed")
            );
            assert_eq!(msg, format!("viduq1 allows resolution 1080p, got \"{r}\""));
        }
    }

    #[test]
    fn each_resolution_of_each_model_passes_and_others_are_refused() {
        let s = settings();
        for &m in MODELS {
            for r in &s.models[m].resolutions {
                assert_eq!(&ok(m, json!({ "resolution": r })).resolution, r);
            }
            for bad in ["4k", "1080P", "360p", ""] {
                let (.., reason, _) = one(m, json!({ "resolution": bad }));
                assert_eq!(reason, "NotAllowed", "{m} {bad}");
            }
        }
        let (.., msg) = one("viduq2", json!({"resolution": "4k"}));
        assert_eq!(
            msg,
            "viduq2 allows resolution 540p, 720p, 1080p, got \"4k\""
        );
    }

    #[test]
    fn wm_position_is_1_to_4() {
        for p in 1..=4u8 {
            assert_eq!(ok("viduq2", json!({ "wm_position": p })).wm_position, p);
        }
        for p in [0, 5, -1] {
            let (top, field, reason, msg) = one("viduq2", json!({ "wm_position": p }));
            assert_eq!(
                (top, field.as_str(), reason),
                ("FieldInvalid", "wm_position", "OutOfRange")
            );
            assert!(msg.ends_with(&format!("got {p}")), "{msg}");
            assert!(msg.contains("3 (bottom-right)"), "{msg}");
        }
    }

    #[test]
    fn seed_is_0_to_2147483647() {
        assert_eq!(ok("viduq2", json!({"seed": 0})).seed, 0);
        assert_eq!(ok("viduq2", json!({"seed": 2147483647})).seed, 2147483647);
        for s in [
            json!(-1),
            json!(2147483648u64),
            json!(18446744073709551615u64),
            json!(-9223372036854775808i64),
        ] {
            let (top, field, reason, msg) = one("viduq2", json!({ "seed": s }));
            assert_eq!(
                (top, field.as_str(), reason),
                ("FieldInvalid", "seed", "OutOfRange")
            );
            assert_eq!(
                msg,
                format!("seed must be an integer in 0..=2147483647 (0 = random), got {s}")
            );
        }
    }

    #[test]
    fn numbers_and_booleans_sent_as_strings_or_floats_are_wrong_types() {
        let cases = [
            (
                json!({"duration": "5"}),
                "duration",
                "duration: expected an integer, got a string (\"5\"): send 5 without quotes",
            ),
            (
                json!({"duration": 5.0}),
                "duration",
                "duration: expected an integer, got a number (5.0): send a whole number such as 5",
            ),
            (
                json!({"duration": 5.5}),
                "duration",
                "duration: expected an integer, got a number (5.5): send a whole number such as 5",
            ),
            (
                json!({"seed": "1"}),
                "seed",
                "seed: expected an integer, got a string (\"1\"): send 1 without quotes",
            ),
            (
                json!({"wm_position": "3"}),
                "wm_position",
                "wm_position: expected an integer, got a string (\"3\"): send 3 without quotes",
            ),
            (
                json!({"wm_position": true}),
                "wm_position",
                "wm_position: expected an integer, got a boolean (true)",
            ),
            (
                json!({"off_peak": "true"}),
                "off_peak",
                "off_peak: expected a boolean (true or false), got a string (\"true\"): send true without quotes",
            ),
            (
                json!({"audio": 1}),
                "audio",
                "audio: expected a boolean (true or false), got a number (1)",
            ),
            (
                json!({"watermark": "no"}),
                "watermark",
                "watermark: expected a boolean (true or false), got a string (\"no\")",
            ),
            (
                json!({"is_rec": 0}),
                "is_rec",
                "is_rec: expected a boolean (true or false), got a number (0)",
            ),
            (
                json!({"bgm": []}),
                "bgm",
                "bgm: expected a boolean (true or false), got an array",
            ),
            (
                json!({"prompt": 5}),
                "prompt",
                "prompt: expected a string, got a number (5)",
            ),
            (
                json!({"voice_id": 7}),
                "voice_id",
                "voice_id: expected a string, got a number (7)",
            ),
            (
                json!({"resolution": 720}),
                "resolution",
                "resolution: expected a string, got a number (720)",
            ),
            (
                json!({"movement_amplitude": false}),
                "movement_amplitude",
                "movement_amplitude: expected a string, got a boolean (false)",
            ),
        ];
        for (extra, field, msg) in cases {
            let (top, f, reason, m) = one("viduq2", extra);
            assert_eq!(
                (top, f.as_str(), reason),
                ("FieldInvalid", field, "WrongType")
            );
            assert_eq!(m, msg);
        }
        let (top, f, reason, m) = one("viduq2", json!({"duration": 1e1}));
        assert_eq!(
            (top, f.as_str(), reason),
            ("FieldInvalid", "duration", "WrongType")
        );
        assert!(m.contains("10.0"), "{m}");
        let b = br#"{"model":"viduq2","images":["https://e.x/a.png"],"duration":5e0}"#;
        assert_eq!(
            validate(b, &settings()).unwrap_err().fields[0].reason,
            "WrongType"
        );
    }

    #[test]
    fn model_must_be_a_catalog_string() {
        let (top, field, reason, msg) = one("viduq9", json!({}));
        assert_eq!(
            (top, field.as_str(), reason),
            ("FieldInvalid", "model", "NotInCatalog")
        );
        assert_eq!(
            msg,
            "unknown model \"viduq9\": this gateway's catalog has viduq1, viduq2, viduq3-pro, viduq3-turbo"
        );
        let r = validate(
            br#"{"model": 2, "images": ["https://e.x/a.png"]}"#,
            &settings(),
        )
        .unwrap_err();
        assert_eq!(
            (r.reason, r.fields[0].reason),
            ("FieldInvalid", "WrongType")
        );
    }

    #[test]
    fn model_dependent_rules_are_skipped_when_the_model_is_unknown() {
        let r = check(
            "nope",
            json!({"prompt": "x".repeat(9000), "duration": 99, "resolution": "9k", "off_peak": true,
                   "duration_typo": 1}),
        )
        .unwrap_err();
        let fields: Vec<_> = r
            .fields
            .iter()
            .map(|f| (f.field.as_str(), f.reason))
            .collect();
        // (json! sorts keys: the body order is duration_typo, …, model)
        assert_eq!(
            fields,
            [("duration_typo", "Unknown"), ("model", "NotInCatalog")]
        );
        // Type errors do not depend on the model and are still reported.
        let r = check("nope", json!({"duration": "5"})).unwrap_err();
        assert_eq!(r.fields.len(), 2);
    }

    #[test]
    fn adding_a_model_to_the_catalog_makes_it_valid_without_code() {
        let mut s = settings();
        let b = body(
            "viduq3-pro-fast",
            json!({"duration": 8, "resolution": "1080p"}),
        );
        assert_eq!(
            validate(&b, &s).unwrap_err().fields[0].reason,
            "NotInCatalog"
        );
        let mut spec = s.models["viduq3-pro"].clone();
        spec.durations.max = 8;
        s.models.insert("viduq3-pro-fast".into(), spec);
        let v = validate(&b, &s).unwrap();
        assert_eq!(
            (v.params.model.as_str(), v.params.duration),
            ("viduq3-pro-fast", 8)
        );
        let b = body("viduq3-pro-fast", json!({"duration": 9}));
        assert_eq!(
            validate(&b, &s).unwrap_err().fields[0].message,
            "viduq3-pro-fast allows 1..=8 seconds, got 9"
        );
    }

    #[test]
    fn a_catalog_from_a_config_file_is_the_whole_catalog() {
        let text = r#"
[auth]
algorithms = ["HS256"]
hs256_secret = "a-test-secret-that-is-long-enough-for-hs256"

[models.viduq3-pro-fast]
durations = { min = 2, max = 8, default = 4 }
resolutions = ["720p"]
default_resolution = "720p"
credits = { base = { "720p" = 3 }, per_second = { "720p" = 10 } }
"#;
        let s = load_from_str(text, Origin::Builtin, Default::default())
            .unwrap()
            .settings;
        let b = body("viduq3-pro-fast", json!({}));
        let v = validate(&b, &s).unwrap();
        assert_eq!(
            (v.params.duration, v.params.resolution.as_str()),
            (4, "720p")
        );
        assert_eq!(v.params.estimate(&s), 43);
        assert_eq!(
            validate(&body("viduq2", json!({})), &s).unwrap_err().fields[0].reason,
            "NotInCatalog"
        );
    }

    #[test]
    fn images_must_hold_exactly_one_string() {
        let s = settings();
        for (imgs, top, field, reason) in [
            (
                json!([]),
                "FieldItemCountOutOfRange",
                "images",
                "CountOutOfRange",
            ),
            (
                json!([IMG, IMG]),
                "FieldItemCountOutOfRange",
                "images",
                "CountOutOfRange",
            ),
            (json!(IMG), "FieldInvalid", "images", "WrongType"),
            (json!({"0": IMG}), "FieldInvalid", "images", "WrongType"),
            (json!([5]), "FieldInvalid", "images[0]", "WrongType"),
            (json!([null]), "FieldInvalid", "images[0]", "WrongType"),
            (json!([[IMG]]), "FieldInvalid", "images[0]", "WrongType"),
        ] {
            let b = serde_json::to_vec(&json!({"model": "viduq2", "images": imgs})).unwrap();
            let r = validate(&b, &s).unwrap_err();
            assert_eq!(r.fields.len(), 1, "{r:?}");
            assert_eq!(
                (r.reason, r.fields[0].field.as_str(), r.fields[0].reason),
                (top, field, reason),
                "{imgs}"
            );
        }
        let b = serde_json::to_vec(&json!({"model": "viduq2", "images": [IMG, IMG]})).unwrap();
        assert_eq!(
            validate(&b, &s).unwrap_err().fields[0].message,
            "images must hold exactly 1 image, got 2"
        );
        let b = serde_json::to_vec(&json!({"model": "viduq2", "images": IMG})).unwrap();
        assert!(
            validate(&b, &s).unwrap_err().fields[0]
                .message
                .contains("wrap it as \"images\": [\"...\"]")
        );
    }

    #[test]
    fn image_problems_are_image_format_invalid_at_images_0() {
        for v in [
            "ftp://example.com/a.png",
            "file:///tmp/a.png",
            "data:text/plain;base64,aGk=",
            "example.com/a.png",
        ] {
            let b = serde_json::to_vec(&json!({"model": "viduq2", "images": [v]})).unwrap();
            let r = validate(&b, &settings()).unwrap_err();
            assert_eq!(
                (r.reason, r.fields[0].field.as_str(), r.fields[0].reason),
                ("ImageFormatInvalid", "images[0]", "ImageInvalid"),
                "{v}"
            );
            assert!(
                r.message.starts_with("invalid field: images[0] — "),
                "{}",
                r.message
            );
        }
    }

    #[test]
    fn data_uri_images_are_checked_and_reported() {
        let s = settings();
        let uri = test_images::data_uri("image/png", &test_images::png(400, 100));
        let b = serde_json::to_vec(&json!({"model": "viduq2", "images": [uri]})).unwrap();
        let v = validate(&b, &s).unwrap();
        assert!(matches!(
            v.image,
            ImageInfo::DataUri {
                width: 400,
                height: 100,
                ..
            }
        ));
        let uri = test_images::data_uri("image/webp", &test_images::png(401, 100));
        let b = serde_json::to_vec(&json!({"model": "viduq2", "images": [uri]})).unwrap();
        let r = validate(&b, &s).unwrap_err();
        assert_eq!(r.reason, "ImageFormatInvalid");
        assert!(r.fields[0].message.contains("is a PNG image"));
        // Escaped slashes (as some encoders write them) decode to the same base64.
        let uri = test_images::data_uri("image/jpeg", &test_images::jpeg(300, 300));
        let escaped = uri.replace('/', "\\/");
        let b = format!(r#"{{"model":"viduq2","images":["{escaped}"]}}"#);
        assert!(validate(b.as_bytes(), &s).is_ok());
    }

    #[test]
    fn meta_data_is_a_string_holding_a_json_object() {
        ok(
            "viduq2",
            json!({"meta_data": r#"{"Label": "your_label", "ContentProducer": "x"}"#}),
        );
        ok("viduq2", json!({"meta_data": ""}));
        let (top, field, reason, msg) = one("viduq2", json!({"meta_data": {"Label": "x"}}));
        assert_eq!(
            (top, field.as_str(), reason),
            ("FieldInvalid", "meta_data", "WrongType")
        );
        assert!(msg.contains("serialised as a JSON string"), "{msg}");
        for bad in ["{not json", "[1, 2]", "\"text\"", "{\"a\": 1} trailing"] {
            let (top, field, reason, msg) = one("viduq2", json!({ "meta_data": bad }));
            assert_eq!(
                (top, field.as_str(), reason),
                ("FieldInvalid", "meta_data", "InvalidJson"),
                "{bad}"
            );
            assert!(
                msg.starts_with("meta_data must be a string holding a JSON object"),
                "{msg}"
            );
        }
    }

    #[test]
    fn urls_must_be_absolute_http_or_https_with_a_host() {
        for field in ["wm_url", "callback_url"] {
            for good in [
                "https://example.com/w.png",
                "http://10.0.0.1:8080/cb?x=1",
                "",
            ] {
                ok("viduq2", json!({ field: good }));
            }
            for bad in [
                "ftp://example.com/w.png",
                "/relative/path",
                "example.com",
                "https://",
                "http:// x.com",
                "javascript:alert(1)",
            ] {
                let (top, f, reason, msg) = one("viduq2", json!({ field: bad }));
                assert_eq!(
                    (top, f.as_str(), reason),
                    ("FieldInvalid", field, "InvalidUrl"),
                    "{bad}"
                );
                assert!(msg.starts_with("expected an absolute http(s) URL"), "{msg}");
            }
        }
    }

    #[test]
    fn enumerations_take_their_documented_values_only() {
        for m in MOVEMENT_AMPLITUDES {
            assert_eq!(
                &ok("viduq3-pro", json!({ "movement_amplitude": m })).movement_amplitude,
                m
            );
        }
        let (.., reason, msg) = one("viduq2", json!({"movement_amplitude": "huge"}));
        assert_eq!(reason, "NotAllowed");
        assert_eq!(
            msg,
            "movement_amplitude must be one of auto, small, medium, large, got \"huge\""
        );
        for t in AUDIO_TYPES {
            ok("viduq3-pro", json!({ "audio_type": t }));
        }
        let (.., reason, _) = one("viduq3-pro", json!({"audio_type": "music"}));
        assert_eq!(reason, "NotAllowed");
    }

    #[test]
    fn off_peak_with_audio_is_refused_where_the_model_cannot_do_both() {
        for m in ["viduq3-pro", "viduq3-turbo"] {
            // audio on by the model's default
            let (top, field, reason, msg) = one(m, json!({"off_peak": true}));
            assert_eq!(
                (top, field.as_str(), reason),
                ("FieldInvalid", "off_peak", "Conflict")
            );
            assert!(
                msg.starts_with(&format!(
                    "send \"audio\": false to use off_peak with {m} (off-peak cannot run with audio"
                )),
                "{msg}"
            );
            // audio explicit
            let (.., msg) = one(m, json!({"off_peak": true, "audio": true}));
            assert!(msg.contains("you sent \"audio\": true"), "{msg}");
            let e = ok(m, json!({"off_peak": true, "audio": false}));
            assert!(e.off_peak && !e.audio);
            ok(m, json!({"off_peak": false}));
        }
        ok("viduq2", json!({"off_peak": true}));
        let (.., reason, _) = one("viduq2", json!({"off_peak": true, "audio": true}));
        assert_eq!(reason, "Conflict");
        // A catalog entry that can do both.
        let mut s = settings();
        s.models.get_mut("viduq3-pro").unwrap().off_peak_with_audio = true;
        assert!(validate(&body("viduq3-pro", json!({"off_peak": true})), &s).is_ok());
        // An ill-typed audio is reported once, not also as a conflict.
        let (.., reason, _) = one("viduq3-pro", json!({"off_peak": true, "audio": "false"}));
        assert_eq!(reason, "WrongType");
    }

    #[test]
    fn null_counts_as_absent_except_for_unknown_fields() {
        let e = ok(
            "viduq3-pro",
            json!({"duration": null, "resolution": null, "audio": null, "prompt": null, "seed": null, "meta_data": null}),
        );
        assert_eq!(
            (e.duration, e.resolution.as_str(), e.audio),
            (5, "720p", true)
        );
        let r = validate(br#"{"model": null, "images": null}"#, &settings()).unwrap_err();
        assert_eq!(r.reason, "FieldLacking");
        assert_eq!(
            r.fields
                .iter()
                .map(|f| (f.field.as_str(), f.reason))
                .collect::<Vec<_>>(),
            [("model", "Missing"), ("images", "Missing")]
        );
        let (top, field, reason, msg) = one("viduq2", json!({"colour": null}));
        assert_eq!(
            (top, field.as_str(), reason),
            ("FieldUnwanted", "colour", "Unknown")
        );
        assert!(
            msg.starts_with("unknown field \"colour\": img2video accepts model, images, prompt"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_fields_are_rejected_or_stripped_per_config() {
        let b = body("viduq2", json!({"colour": "red", "size": 3}));
        let r = validate(&b, &settings()).unwrap_err();
        assert_eq!(r.reason, "FieldUnwanted");
        assert!(
            r.message
                .starts_with("invalid fields: colour, size — unknown field \"colour\""),
            "{}",
            r.message
        );
        assert!(
            r.message.ends_with("(and 1 more in metadata.fields)"),
            "{}",
            r.message
        );
        let s = strip_settings();
        let v = validate(&b, &s).unwrap();
        assert_eq!(v.stripped, ["colour", "size"]);
        let shared = Bytes::from(b.clone());
        let fwd = v.forward_body(&shared, &[]);
        let fwd: Value = serde_json::from_slice(&fwd).unwrap();
        assert_eq!(fwd, json!({"model": "viduq2", "images": [IMG]}));
        assert!(v.needs_rewrite(&[]));
    }

    #[test]
    fn a_known_field_sent_twice_is_refused() {
        let b = br#"{"model":"viduq2","images":["https://e.x/a.png"],"duration":5,"duration":6}"#;
        let r = validate(b, &settings()).unwrap_err();
        assert_eq!((r.reason, r.fields.len()), ("FieldInvalid", 1));
        assert_eq!(
            (
                r.fields[0].field.as_str(),
                r.fields[0].reason,
                r.fields[0].message.as_str()
            ),
            (
                "duration",
                "Duplicate",
                "duration appears 2 times: send it once"
            )
        );
        let b =
            br#"{"model":"viduq2","model":"viduq1","images":["https://e.x/a.png"],"prompt":"x"}"#;
        let r = validate(b, &settings()).unwrap_err();
        assert_eq!(r.fields.len(), 1, "{r:?}");
    }

    #[test]
    fn escaped_keys_are_the_fields_they_spell() {
        let b = br#"{"model":"viduq2","images":["https://e.x/a.png"],"dur\u0061tion":7}"#;
        assert_eq!(validate(b, &settings()).unwrap().params.duration, 7);
    }

    #[test]
    fn several_problems_are_all_reported_with_reason_precedence() {
        let s = settings();
        let cases: [(Value, &str); 5] = [
            (
                json!({"images": [], "colour": 1, "duration": "5"}),
                "FieldLacking",
            ),
            (
                json!({"model": "viduq2", "images": [], "colour": 1, "duration": "5"}),
                "FieldItemCountOutOfRange",
            ),
            (
                json!({"model": "viduq2", "images": ["ftp://x/a.png"], "colour": 1, "duration": "5"}),
                "FieldUnwanted",
            ),
            (
                json!({"model": "viduq2", "images": ["ftp://x/a.png"], "duration": "5"}),
                "ImageFormatInvalid",
            ),
            (
                json!({"model": "viduq2", "images": [IMG], "duration": "5", "seed": -1}),
                "FieldInvalid",
            ),
        ];
        for (v, top) in cases {
            let r = validate(&serde_json::to_vec(&v).unwrap(), &s).unwrap_err();
            assert_eq!(r.reason, top, "{v}");
        }
        let v = json!({"model": "viduq2", "images": [IMG], "prompt": "x".repeat(2001), "duration": 12,
                       "resolution": "4k", "seed": -1, "wm_position": 9, "movement_amplitude": "huge",
                       "payload": 3, "off_peak": "yes", "wm_url": "ftp://x", "meta_data": "{", "callback_url": "x",
                       "audio_type": "loud", "extra": true});
        let r = validate(&serde_json::to_vec(&v).unwrap(), &s).unwrap_err();
        let got: Vec<_> = r
            .fields
            .iter()
            .map(|f| (f.field.as_str(), f.reason))
            .collect();
        assert_eq!(r.reason, "FieldUnwanted");
        assert_eq!(got.len(), 13, "{got:?}");
        for expected in [
            ("prompt", "TooLong"),
            ("duration", "OutOfRange"),
            ("resolution", "NotAllowed"),
            ("seed", "OutOfRange"),
            ("wm_position", "OutOfRange"),
            ("movement_amplitude", "NotAllowed"),
            ("payload", "WrongType"),
            ("off_peak", "WrongType"),
            ("wm_url", "InvalidUrl"),
            ("meta_data", "InvalidJson"),
            ("callback_url", "InvalidUrl"),
            ("audio_type", "NotAllowed"),
            ("extra", "Unknown"),
        ] {
            assert!(got.contains(&expected), "{expected:?} missing from {got:?}");
        }
        let r = check("viduq2", json!({"duration": 12, "resolution": "4k"})).unwrap_err();
        assert_eq!(
            r.message,
            "invalid fields: duration, resolution — viduq2 allows 1..=10 seconds, got 12 \
             (and 1 more in metadata.fields)"
        );
        assert_eq!(r.fields[0].message, "viduq2 allows 1..=10 seconds, got 12");
    }

    #[test]
    fn violations_follow_body_order_with_missing_fields_first() {
        let b = br#"{"seed":-1,"images":["https://e.x/a.png"],"duration":"x","zzz":1}"#;
        let r = validate(b, &settings()).unwrap_err();
        let got: Vec<_> = r.fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(got, ["model", "seed", "duration", "zzz"]);
        let b = br#"{"duration":"x","images":["https://e.x/a.png"]}"#;
        let r = validate(b, &settings()).unwrap_err();
        let got: Vec<_> = r.fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(got, ["model", "duration"]);
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_bad_requests() {
        let s = settings();
        for b in [
            &b""[..],
            b"   ",
            b"[1,2]",
            b"\"text\"",
            b"null",
            b"{\"model\": ",
            b"{\"model\":\"viduq2\"} trailing",
            b"\xff\xfe{}",
            b"{'model': 'viduq2'}",
        ] {
            let r = validate(b, &s).unwrap_err();
            assert_eq!(r.reason, "BadRequest", "{b:?}");
            assert!(r.fields.is_empty());
            assert!(r.message.contains("JSON object"), "{}", r.message);
        }
        let r = validate(b"\xff{}", &s).unwrap_err();
        assert!(r.message.starts_with("the body is not UTF-8"));
    }

    #[test]
    fn estimates_follow_the_catalog_price_table() {
        let s = settings();
        let e = ok("viduq2", json!({}));
        assert_eq!(e.estimate(&s), 55); // 5 + 10 × 5
        assert_eq!(e.estimate_with_off_peak(&s, true), 28); // ceil(27.5)
        let e = ok("viduq2", json!({"is_rec": true, "off_peak": true}));
        assert_eq!(e.estimate(&s), 38);
        assert_eq!(e.estimate_with_off_peak(&s, false), 65);
        assert_eq!(ok("viduq1", json!({})).estimate(&s), 80);
        assert_eq!(
            ok("viduq3-pro", json!({"duration": 16, "resolution": "1080p"})).estimate(&s),
            384
        );
    }

    // --- rewrite -------------------------------------------------------------------------------------------------

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

    // --- properties ----------------------------------------------------------------------------------------------

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Value::from),
                ".{0,12}".prop_map(Value::String),
                prop_oneof![
                    Just("viduq2"),
                    Just("viduq1"),
                    Just("viduq3-pro"),
                    Just("540p"),
                    Just("1080p"),
                    Just("auto"),
                    Just("https://e.x/a.png"),
                    Just("data:image/png;base64,iVBORw0KGgo="),
                    Just("{}"),
                    Just("5"),
                    Just("data:image/png;base64,"),
                    Just("http://"),
                    Just("true")
                ]
                .prop_map(|s| Value::String(s.into())),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(".{0,6}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => prop::sample::select(KNOWN_FIELDS).prop_map(str::to_owned),
                1 => ".{0,8}",
            ]
        }

        fn assert_sane(body: &[u8], s: &Settings) {
            match validate(body, s) {
                Ok(v) => {
                    assert!(s.models.contains_key(&v.params.model));
                    let _ = v.params.estimate(s);
                }
                Err(r) => {
                    assert!(!r.reason.is_empty());
                    assert!(!r.message.is_empty());
                    assert!(r.reason == "BadRequest" || !r.fields.is_empty(), "{r:?}");
                    for f in &r.fields {
                        assert!(!f.field.is_empty() || f.reason == "Unknown");
                        assert!(!f.message.is_empty());
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                assert_sane(&bytes, &settings());
            }

            #[test]
            fn arbitrary_json_ish_text_never_panics(text in r#"[{}\[\]",:0-9a-z\\ .eE+-]{0,80}"#) {
                assert_sane(text.as_bytes(), &settings());
            }

            #[test]
            fn arbitrary_objects_never_panic_in_either_unknown_field_mode(
                members in prop::collection::vec((key(), json_value()), 0..10),
                strip in any::<bool>(),
            ) {
                let mut s = settings();
                if strip {
                    s.validation.unknown_fields = UnknownFields::Strip;
                }
                let obj: serde_json::Map<String, Value> = members.into_iter().collect();
                let body = serde_json::to_vec(&Value::Object(obj)).unwrap();
                assert_sane(&body, &s);
                // A rewrite of any object stays a JSON object with the set field.
                let out = rewrite(&body, &[("off_peak", json!(true))], &["model"]);
                let v: Value = serde_json::from_slice(&out).unwrap();
                prop_assert_eq!(v.get("off_peak"), Some(&json!(true)));
                prop_assert!(v.get("model").is_none());
            }

            #[test]
            fn arbitrary_values_at_every_known_field_never_panic(field in key(), value in json_value()) {
                let mut v = json!({"model": "viduq3-pro", "images": ["https://e.x/a.png"]});
                v[field.as_str()] = value;
                assert_sane(&serde_json::to_vec(&v).unwrap(), &settings());
            }
        }
    }
}
