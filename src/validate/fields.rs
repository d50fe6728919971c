//! The known fields of an img2video body — ONE table ([`FIELDS`]: name, JSON type, what applies when absent) from
//! which the reading, the type checks, the typed [`Fields`] and the list of defaulted fields are derived — and the
//! rules each field must follow.
//!
//! Each known field is type-checked strictly: integers must be JSON integers (`"5"` and `5.0` are `WrongType`),
//! booleans JSON booleans, strings JSON strings. A JSON `null` counts as absent (and is forwarded unchanged), except
//! that an unknown field is unknown whatever its value. A known field sent twice is a `Duplicate` problem (which of
//! the two would Vidu use? the caller must say once). An empty string for `wm_url`, `callback_url` or `meta_data`
//! counts as unset (Vidu's docs: "if empty, …").
//!
//! The per-field rules run through `validator` (derive on [`Fields`], with the requested model as context for the
//! model-dependent rules and the off-peak/audio cross-field rule). `model`, `images[0]` and `resolution` are
//! resolved rather than only checked — into the catalog's [`Model`], the image check's [`ImageInfo`] and the
//! model's priced [`Offer`] — so what passes is what later phases use. When `model` is missing or not in the
//! catalog, the model-dependent rules (prompt length, duration, resolution, off-peak/audio) are skipped rather than
//! reported against a guess.

use std::borrow::Cow;
use std::ops::RangeInclusive;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use validator::{Validate, ValidateArgs, ValidationError};

use super::image::{ImageInfo, check_image};
use super::members::{
    Kind, Member, describe, kind, one_plain_string, preview, raw_bool, raw_int, raw_str,
};
use super::reasons::{FieldReason, Found};
use crate::catalog::{Catalog, Model, Offer};
use crate::config::UnknownFields;

/// `payload` limit, in characters.
pub const PAYLOAD_MAX_CHARS: usize = 1_048_576;
/// Largest `seed` clients send (Vidu: 0 or absent = random).
pub const SEED_MAX: i64 = 2_147_483_647;
pub const MOVEMENT_AMPLITUDES: &[&str] = &["auto", "small", "medium", "large"];
pub const AUDIO_TYPES: &[&str] = &["all", "speech_only", "sound_effect_only"];
/// Watermark positions: 1 top-left, 2 top-right, 3 bottom-right, 4 bottom-left.
pub const WM_POSITIONS: RangeInclusive<i64> = 1..=4;
/// Vidu's default watermark position (bottom-right).
pub const DEFAULT_WM_POSITION: u8 = 3;
/// Vidu's default `movement_amplitude`.
pub const DEFAULT_MOVEMENT_AMPLITUDE: &str = "auto";

/// One row of the field table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub json: Json,
    pub absent: Absent,
}

/// The JSON type a field takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Json {
    Integer,
    Boolean,
    String,
    /// A string holding a JSON object (`meta_data`).
    JsonObjectString,
    /// An array holding the one image (`images`).
    ImageArray,
}

/// What the effective parameters say when a field is absent (or `null`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Absent {
    /// Nothing: Vidu applies its own default, if any.
    Unset,
    /// The model's catalog entry (`durations.default`, `default_resolution`, `audio_default`); listed in
    /// `effective.defaulted`.
    CatalogDefault,
    /// Vidu's documented default, stated by the gateway; listed in `effective.defaulted`.
    ViduDefault,
}

impl Absent {
    /// True when the effective parameters list the field as defaulted.
    pub fn listed(self) -> bool {
        self != Absent::Unset
    }
}

/// The field table, the typed fields and their rules, from one list.
macro_rules! fields {
    ($(
        $(#[doc = $doc:literal])*
        $(#[validate($($rule:tt)*)])*
        $name:ident: $ty:ident, $absent:ident;
    )*) => {
        /// The fields of Vidu's img2video body, in the docs' order.
        pub const FIELDS: &[Field] = &[$(Field {
            name: stringify!($name),
            json: <$ty<'static> as FromJson<'static>>::JSON,
            absent: Absent::$absent,
        },)*];

        /// The known fields of one body, typed: `None` when absent or `null`, sent twice, or of the wrong JSON type.
        #[derive(Debug, Default, Validate)]
        #[validate(context = "Ctx<'v_a>")]
        #[validate(schema(
            function = "check_off_peak_audio",
            use_context,
            skip_on_field_errors = false
        ))]
        pub(crate) struct Fields<'a> {
            $(
                $(#[doc = $doc])*
                $(#[validate($($rule)*)])*
                pub $name: Option<Given<'a, $ty<'a>>>,
            )*
        }

        /// The problem of each known field sent twice or with the wrong JSON type, until its resolver takes it.
        #[derive(Debug, Default)]
        pub(crate) struct Refused {
            $(pub $name: Option<Found>,)*
        }

        impl<'a> Fields<'a> {
            /// Types each field's occurrences (`slots`, in table order); the refused ones' problems go to `Refused`.
            fn typed(slots: [Slot<'a>; FIELDS.len()]) -> (Self, Refused) {
                let [$($name),*] = slots;
                let mut refused = Refused::default();
                let fields = Self {
                    $($name: $name.typed(stringify!($name), &mut refused.$name),)*
                };
                (fields, refused)
            }

            /// Whether the body gave each field a value, in table order.
            pub fn given(&self) -> [bool; FIELDS.len()] {
                [$(self.$name.is_some()),*]
            }

            /// Where the field called `name` sits in the body (0 when it is absent).
            fn position(&self, name: &str) -> usize {
                match name {
                    $(stringify!($name) => self.$name.as_ref().map_or(0, |g| g.pos),)*
                    _ => 0,
                }
            }
        }

        impl Refused {
            /// The problems no resolver took, in table order.
            pub fn into_vec(self) -> Vec<Found> {
                [$(self.$name),*].into_iter().flatten().collect()
            }
        }
    };
}

fields! {
    // name:            Rust type,   when absent
    model:              Text,        Unset;
    images:             ImageList,   Unset;
    #[validate(custom(function = "check_prompt", use_context))]
    prompt:             Text,        Unset;
    #[validate(custom(function = "check_duration", use_context))]
    duration:           Integer,     CatalogDefault;
    #[validate(custom(function = "check_seed"))]
    seed:               Integer,     ViduDefault;
    resolution:         Text,        CatalogDefault;
    #[validate(custom(function = "check_movement_amplitude"))]
    movement_amplitude: Text,        ViduDefault;
    #[validate(custom(function = "check_payload"))]
    payload:            Text,        Unset;
    off_peak:           Boolean,     ViduDefault;
    watermark:          Boolean,     ViduDefault;
    #[validate(custom(function = "check_wm_position"))]
    wm_position:        Integer,     ViduDefault;
    #[validate(custom(function = "check_http_url"))]
    wm_url:             Text,        Unset;
    #[validate(custom(function = "check_meta_data"))]
    meta_data:          ObjectText,  Unset;
    #[validate(custom(function = "check_http_url"))]
    callback_url:       Text,        Unset;
    audio:              Boolean,     CatalogDefault;
    voice_id:           Text,        Unset;
    is_rec:             Boolean,     ViduDefault;
    /// The effective parameters report Vidu's default (off) without listing it as defaulted.
    bgm:                Boolean,     Unset;
    #[validate(custom(function = "check_audio_type"))]
    audio_type:         Text,        Unset;
}

/// The names of the known fields, in the docs' order.
pub fn field_names() -> impl Iterator<Item = &'static str> {
    FIELDS.iter().map(|f| f.name)
}

// ---------------------------------------------------------------------------------------------------------------
// JSON types.

/// How a field's value is read from its raw JSON, and the JSON type that takes.
pub(crate) trait FromJson<'a>: Sized {
    const JSON: Json;
    fn from_json(raw: &'a RawValue) -> Option<Self>;
}

pub(crate) type Integer<'a> = i64;
pub(crate) type Boolean<'a> = bool;
pub(crate) type Text<'a> = Cow<'a, str>;

/// A string that should hold a JSON object.
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub(crate) struct ObjectText<'a>(pub Cow<'a, str>);

/// The `images` array, as sent.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ImageList<'a>(pub &'a RawValue);

impl<'a> FromJson<'a> for i64 {
    const JSON: Json = Json::Integer;
    fn from_json(raw: &'a RawValue) -> Option<Self> {
        raw_int(raw)
    }
}

impl<'a> FromJson<'a> for bool {
    const JSON: Json = Json::Boolean;
    fn from_json(raw: &'a RawValue) -> Option<Self> {
        raw_bool(raw)
    }
}

impl<'a> FromJson<'a> for Cow<'a, str> {
    const JSON: Json = Json::String;
    fn from_json(raw: &'a RawValue) -> Option<Self> {
        raw_str(raw)
    }
}

impl<'a> FromJson<'a> for ObjectText<'a> {
    const JSON: Json = Json::JsonObjectString;
    fn from_json(raw: &'a RawValue) -> Option<Self> {
        raw_str(raw).map(ObjectText)
    }
}

impl<'a> FromJson<'a> for ImageList<'a> {
    const JSON: Json = Json::ImageArray;
    fn from_json(raw: &'a RawValue) -> Option<Self> {
        (kind(raw) == Kind::Array).then_some(ImageList(raw))
    }
}

impl Json {
    /// `duration: expected an integer, got a string ("5"): send 5 without quotes`.
    fn wrong_type(self, field: &str, raw: &RawValue) -> String {
        let expected = match self {
            Json::Integer => "an integer",
            Json::Boolean => "a boolean (true or false)",
            Json::String => "a string",
            Json::JsonObjectString => "a string holding a JSON object",
            Json::ImageArray => "an array with one image",
        };
        let hint = match (self, raw_str(raw)) {
            (Json::Integer, Some(s)) if s.trim().parse::<i64>().is_ok() => {
                format!(": send {} without quotes", s.trim())
            }
            (Json::Integer, None) if kind(raw) == Kind::Number => {
                ": send a whole number such as 5".into()
            }
            (Json::Boolean, Some(s)) if s == "true" || s == "false" => {
                format!(": send {s} without quotes")
            }
            (Json::JsonObjectString, None) if kind(raw) == Kind::Object => {
                r#": send the object serialised as a JSON string, e.g. "{\"Label\": \"x\"}""#.into()
            }
            (Json::ImageArray, _) => r#": wrap it as "images": ["..."]"#.into(),
            _ => String::new(),
        };
        format!("{field}: expected {expected}, got {}{hint}", describe(raw))
    }
}

/// A field's value as the body gave it: where (1-based member position), its raw JSON, and its typed value.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Given<'a, T> {
    pub pos: usize,
    pub raw: &'a RawValue,
    pub value: T,
}

impl<T: Serialize> Serialize for Given<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Reading.

/// A known field's occurrences in the body.
#[derive(Default)]
struct Slot<'a> {
    count: usize,
    /// Position of the first occurrence.
    first: usize,
    /// The last non-`null` value and its position.
    value: Option<(usize, &'a RawValue)>,
}

impl<'a> Slot<'a> {
    fn typed<T: FromJson<'a>>(
        self,
        name: &str,
        refused: &mut Option<Found>,
    ) -> Option<Given<'a, T>> {
        if self.count > 1 {
            *refused = Some(Found::new(
                self.first,
                name,
                FieldReason::Duplicate,
                format!("{name} appears {} times: send it once", self.count),
            ));
            return None;
        }
        let (pos, raw) = self.value?;
        match T::from_json(raw) {
            Some(value) => Some(Given { pos, raw, value }),
            None => {
                *refused = Some(Found::new(
                    pos,
                    name,
                    FieldReason::WrongType,
                    T::JSON.wrong_type(name, raw),
                ));
                None
            }
        }
    }
}

/// A body's members, read against the table.
pub(crate) struct Read<'a> {
    pub fields: Fields<'a>,
    pub refused: Refused,
    /// Unknown fields, when they are refused (`validation.unknown_fields = "reject"`).
    pub unknown: Vec<Found>,
    /// Unknown fields to remove before forwarding (`validation.unknown_fields = "strip"`), in body order.
    pub stripped: Vec<String>,
}

pub(crate) fn read<'a>(members: &[Member<'a>], unknown_fields: UnknownFields) -> Read<'a> {
    let mut slots: [Slot<'a>; FIELDS.len()] = std::array::from_fn(|_| Slot::default());
    let mut unknown = Vec::new();
    let mut stripped: Vec<String> = Vec::new();
    // Positions are 1-based: 0 sorts missing fields first.
    for (pos, m) in (1..).zip(members) {
        let Some(slot) = FIELDS
            .iter()
            .position(|f| f.name == m.key)
            .and_then(|k| slots.get_mut(k))
        else {
            match unknown_fields {
                UnknownFields::Reject => unknown.push(Found::new(
                    pos,
                    &m.key,
                    FieldReason::Unknown,
                    format!(
                        "unknown field \"{}\": img2video accepts {}; remove it",
                        preview(&m.key, 64),
                        field_names().collect::<Vec<_>>().join(", ")
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
        slot.count += 1;
        if slot.count == 1 {
            slot.first = pos;
        }
        if kind(m.value) != Kind::Null {
            slot.value = Some((pos, m.value));
        }
    }
    let (fields, refused) = Fields::typed(slots);
    Read {
        fields,
        refused,
        unknown,
        stripped,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// What is resolved: the model, the image, the resolution.

fn model_names(catalog: &Catalog) -> String {
    catalog
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The requested model, from the catalog.
pub(crate) fn resolve_model<'c>(
    fields: &Fields<'_>,
    refused: &mut Refused,
    catalog: &'c Catalog,
) -> Result<Model<'c>, Found> {
    let Some(given) = &fields.model else {
        return Err(refused.model.take().unwrap_or_else(|| {
            Found::new(
                0,
                "model",
                FieldReason::Missing,
                format!("model is required: one of {}", model_names(catalog)),
            )
        }));
    };
    Model::find(catalog, &given.value).ok_or_else(|| {
        Found::new(
            given.pos,
            "model",
            FieldReason::NotInCatalog,
            format!(
                "unknown model \"{}\": this gateway's catalog has {}",
                preview(&given.value, 64),
                model_names(catalog)
            ),
        )
    })
}

/// `images[0]`: exactly one string, checked without decoding the image. `streamed`: the check of that string when
/// it was made as the body arrived (the array then holds it as `""`).
pub(crate) fn resolve_image(
    fields: &Fields<'_>,
    refused: &mut Refused,
    streamed: Option<&Result<ImageInfo, String>>,
) -> Result<ImageInfo, Found> {
    let Some(given) = &fields.images else {
        return Err(refused.images.take().unwrap_or_else(|| {
            Found::new(
                0,
                "images",
                FieldReason::Missing,
                "images is required: an array with one http(s) URL or data:image/<png|jpeg|webp>;base64,... URI"
                    .into(),
            )
        }));
    };
    let found = |field: &str, reason, message| Found::new(given.pos, field, reason, message);
    let image = |s: &str| {
        let verdict = match streamed {
            Some(v) => v.clone(),
            None => check_image(s),
        };
        verdict.map_err(|m| found("images[0]", FieldReason::ImageInvalid, m))
    };
    let array = given.value.0;
    if let Some(s) = one_plain_string(array) {
        return image(s);
    }
    match serde_json::from_str::<Vec<&RawValue>>(array.get()) {
        Ok(items) => match items.as_slice() {
            [item] => match raw_str(item) {
                Some(s) => image(&s),
                None => Err(found(
                    "images[0]",
                    FieldReason::WrongType,
                    format!(
                        "images[0]: expected a string (an http(s) URL or a data URI), got {}",
                        describe(item)
                    ),
                )),
            },
            items => Err(found(
                "images",
                FieldReason::CountOutOfRange,
                format!("images must hold exactly 1 image, got {}", items.len()),
            )),
        },
        // Unreachable for a value serde_json already parsed as an array; reported rather than assumed.
        Err(e) => Err(found(
            "images",
            FieldReason::WrongType,
            format!("images: expected an array of strings ({e})"),
        )),
    }
}

/// The resolution the request runs at, as `model` offers it: the one sent, else the model's default.
pub(crate) fn resolve_offer<'c>(
    model: Model<'c>,
    fields: &Fields<'_>,
    refused: &mut Refused,
) -> Result<Offer<'c>, Found> {
    let Some(given) = &fields.resolution else {
        return refused
            .resolution
            .take()
            .map_or(Ok(model.default_offer()), Err);
    };
    model.offer(&given.value).ok_or_else(|| {
        Found::new(
            given.pos,
            "resolution",
            FieldReason::NotAllowed,
            format!(
                "{} allows resolution {}, got \"{}\"",
                model.name(),
                model.spec().resolutions.join(", "),
                preview(&given.value, 32)
            ),
        )
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Rules, through `validator`.

/// What the model-dependent rules need.
pub(crate) struct Ctx<'v_a> {
    /// The requested model, when it is in the catalog.
    pub model: Option<Model<'v_a>>,
    /// `off_peak` and `audio` were both well-typed and sent once (else the cross-field rule would report a
    /// cascade).
    pub cross_field_inputs_ok: bool,
}

/// Every rule the typed fields break, each with where its field sits in the body.
pub(crate) fn rule_problems(fields: &Fields<'_>, ctx: &Ctx<'_>) -> Vec<Found> {
    let Err(errors) = fields.validate_with_args(ctx) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, list) in errors.field_errors() {
        // The cross-field rule is reported on `off_peak`.
        let field: &str = if name == "__all__" {
            "off_peak"
        } else {
            name.as_ref()
        };
        for e in list {
            out.push(Found::new(
                fields.position(field),
                field,
                FieldReason::from_code(&e.code),
                e.message
                    .as_ref()
                    .map_or_else(|| format!("{field} is invalid"), |m| m.to_string()),
            ));
        }
    }
    out
}

/// A broken rule: `reason` is the problem's field reason.
fn violation(reason: FieldReason, message: String) -> ValidationError {
    ValidationError::new(reason.as_str()).with_message(Cow::Owned(message))
}

/// A text of at most `max` characters; else `rule` and the length.
fn at_most_chars(
    text: &str,
    max: usize,
    rule: impl FnOnce() -> String,
) -> Result<(), ValidationError> {
    // Count no further than needed: one past the limit proves it too long.
    if text.chars().take(max + 1).count() <= max {
        return Ok(());
    }
    Err(violation(
        FieldReason::TooLong,
        format!("{}, got {}: shorten it", rule(), text.chars().count()),
    ))
}

fn check_prompt(prompt: &Given<'_, Text<'_>>, ctx: &Ctx<'_>) -> Result<(), ValidationError> {
    let Some(model) = ctx.model else {
        return Ok(());
    };
    let max = model.spec().prompt_max_chars;
    at_most_chars(&prompt.value, max, || {
        format!("{} allows at most {max} characters in prompt", model.name())
    })
}

fn check_duration(duration: &Given<'_, Integer<'_>>, ctx: &Ctx<'_>) -> Result<(), ValidationError> {
    let Some(model) = ctx.model else {
        return Ok(());
    };
    let r = model.spec().durations;
    if (i64::from(r.min)..=i64::from(r.max)).contains(&duration.value) {
        return Ok(());
    }
    let allowed = if r.min == r.max {
        format!("only {} seconds", r.min)
    } else {
        format!("{}..={} seconds", r.min, r.max)
    };
    Err(violation(
        FieldReason::OutOfRange,
        format!("{} allows {allowed}, got {}", model.name(), duration.value),
    ))
}

/// An integer in `range`; else `rule` and the value as sent.
fn integer_in(
    given: &Given<'_, Integer<'_>>,
    range: RangeInclusive<i64>,
    rule: impl FnOnce() -> String,
) -> Result<(), ValidationError> {
    if range.contains(&given.value) {
        return Ok(());
    }
    Err(violation(
        FieldReason::OutOfRange,
        format!("{}, got {}", rule(), preview(given.raw.get(), 32)),
    ))
}

fn check_seed(seed: &Given<'_, Integer<'_>>) -> Result<(), ValidationError> {
    integer_in(seed, 0..=SEED_MAX, || {
        format!("seed must be an integer in 0..={SEED_MAX} (0 = random)")
    })
}

fn check_wm_position(position: &Given<'_, Integer<'_>>) -> Result<(), ValidationError> {
    integer_in(position, WM_POSITIONS, || {
        "wm_position must be 1 (top-left), 2 (top-right), 3 (bottom-right) or 4 (bottom-left)"
            .into()
    })
}

fn check_payload(payload: &Given<'_, Text<'_>>) -> Result<(), ValidationError> {
    at_most_chars(&payload.value, PAYLOAD_MAX_CHARS, || {
        format!("payload may hold at most {PAYLOAD_MAX_CHARS} characters")
    })
}

fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<(), ValidationError> {
    if allowed.contains(&value) {
        return Ok(());
    }
    Err(violation(
        FieldReason::NotAllowed,
        format!(
            "{field} must be one of {}, got \"{}\"",
            allowed.join(", "),
            preview(value, 32)
        ),
    ))
}

fn check_movement_amplitude(value: &Given<'_, Text<'_>>) -> Result<(), ValidationError> {
    one_of("movement_amplitude", &value.value, MOVEMENT_AMPLITUDES)
}

fn check_audio_type(value: &Given<'_, Text<'_>>) -> Result<(), ValidationError> {
    one_of("audio_type", &value.value, AUDIO_TYPES)
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

fn check_http_url(value: &Given<'_, Text<'_>>) -> Result<(), ValidationError> {
    let value = &value.value;
    if value.is_empty() || is_http_url(value) {
        return Ok(());
    }
    Err(violation(
        FieldReason::InvalidUrl,
        format!(
            "expected an absolute http(s) URL with a host, such as https://example.com/path, got \"{}\"",
            preview(value, 64)
        ),
    ))
}

fn check_meta_data(value: &Given<'_, ObjectText<'_>>) -> Result<(), ValidationError> {
    let value = &value.value.0;
    if value.is_empty() {
        return Ok(());
    }
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(value) {
        Ok(_) => Ok(()),
        Err(e) => Err(violation(
            FieldReason::InvalidJson,
            format!(
                "meta_data must be a string holding a JSON object, such as \"{{\\\"Label\\\": \\\"your_label\\\"}}\"; this one does not parse as one ({e})"
            ),
        )),
    }
}

fn check_off_peak_audio(fields: &Fields<'_>, ctx: &Ctx<'_>) -> Result<(), ValidationError> {
    let Some(model) = ctx.model else {
        return Ok(());
    };
    let off_peak = fields.off_peak.is_some_and(|g| g.value);
    if !ctx.cross_field_inputs_ok || !off_peak || model.spec().off_peak_with_audio {
        return Ok(());
    }
    let (audio, why) = match fields.audio {
        Some(a) => (a.value, "you sent \"audio\": true"),
        None => (
            model.spec().audio_default,
            "audio is on by default for this model",
        ),
    };
    if !audio {
        return Ok(());
    }
    Err(violation(
        FieldReason::Conflict,
        format!(
            "send \"audio\": false to use off_peak with {} (off-peak cannot run with audio; {why}), or drop \"off_peak\"",
            model.name()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_each_field_once_with_the_json_type_of_its_rust_type() {
        let names: Vec<_> = field_names().collect();
        assert_eq!(names.len(), 19);
        for (i, name) in names.iter().enumerate() {
            assert!(!names[..i].contains(name), "{name} twice");
        }
        assert_eq!(names[..3], ["model", "images", "prompt"], "the docs' order");
        let row = |name: &str| *FIELDS.iter().find(|f| f.name == name).unwrap();
        assert_eq!(row("duration").json, Json::Integer);
        assert_eq!(row("is_rec").json, Json::Boolean);
        assert_eq!(row("voice_id").json, Json::String);
        assert_eq!(row("meta_data").json, Json::JsonObjectString);
        assert_eq!(row("images").json, Json::ImageArray);
        assert_eq!(row("resolution").absent, Absent::CatalogDefault);
        assert_eq!(row("wm_position").absent, Absent::ViduDefault);
        assert_eq!(row("voice_id").absent, Absent::Unset);
    }
}
