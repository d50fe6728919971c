//! Why a body was refused: the fine reason of each field problem, the envelope's top-level reason, the precedence
//! between them, and the message that sums them up.
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
//! When problems of several kinds are present, the top-level reason is the first present in Vidu's order:
//! `FieldLacking`, `FieldItemCountOutOfRange`, `FieldUnwanted`, `ImageFormatInvalid`, `FieldInvalid`. A body that is
//! not UTF-8, not JSON or not an object is a `BadRequest` with no `fields`.

use serde::Serialize;

/// Why one field was refused: `metadata.fields[].reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum FieldReason {
    Missing,
    CountOutOfRange,
    Unknown,
    ImageInvalid,
    WrongType,
    OutOfRange,
    NotInCatalog,
    NotAllowed,
    TooLong,
    InvalidUrl,
    InvalidJson,
    Conflict,
    Duplicate,
    /// A rule refused the field without a reason of its own (no rule here does).
    Invalid,
}

impl FieldReason {
    /// Every field reason, each once.
    pub const ALL: [FieldReason; 14] = [
        FieldReason::Missing,
        FieldReason::CountOutOfRange,
        FieldReason::Unknown,
        FieldReason::ImageInvalid,
        FieldReason::WrongType,
        FieldReason::OutOfRange,
        FieldReason::NotInCatalog,
        FieldReason::NotAllowed,
        FieldReason::TooLong,
        FieldReason::InvalidUrl,
        FieldReason::InvalidJson,
        FieldReason::Conflict,
        FieldReason::Duplicate,
        FieldReason::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FieldReason::Missing => "Missing",
            FieldReason::CountOutOfRange => "CountOutOfRange",
            FieldReason::Unknown => "Unknown",
            FieldReason::ImageInvalid => "ImageInvalid",
            FieldReason::WrongType => "WrongType",
            FieldReason::OutOfRange => "OutOfRange",
            FieldReason::NotInCatalog => "NotInCatalog",
            FieldReason::NotAllowed => "NotAllowed",
            FieldReason::TooLong => "TooLong",
            FieldReason::InvalidUrl => "InvalidUrl",
            FieldReason::InvalidJson => "InvalidJson",
            FieldReason::Conflict => "Conflict",
            FieldReason::Duplicate => "Duplicate",
            FieldReason::Invalid => "Invalid",
        }
    }

    /// The reason named `code` (a rule's error code is the name of its reason); `Invalid` for any other code.
    pub fn from_code(code: &str) -> FieldReason {
        FieldReason::ALL
            .into_iter()
            .find(|r| r.as_str() == code)
            .unwrap_or(FieldReason::Invalid)
    }

    /// The envelope's reason for a body with this problem.
    pub fn top_level(self) -> Reason {
        match self {
            FieldReason::Missing => Reason::FieldLacking,
            FieldReason::CountOutOfRange => Reason::FieldItemCountOutOfRange,
            FieldReason::Unknown => Reason::FieldUnwanted,
            FieldReason::ImageInvalid => Reason::ImageFormatInvalid,
            FieldReason::WrongType
            | FieldReason::OutOfRange
            | FieldReason::NotInCatalog
            | FieldReason::NotAllowed
            | FieldReason::TooLong
            | FieldReason::InvalidUrl
            | FieldReason::InvalidJson
            | FieldReason::Conflict
            | FieldReason::Duplicate
            | FieldReason::Invalid => Reason::FieldInvalid,
        }
    }
}

/// Why a body was refused: the envelope's top-level `reason`. The field reasons' variants are declared in Vidu's
/// precedence order (the first present wins), so the order of this type is the precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[schema(as = ValidationReason)]
pub enum Reason {
    FieldLacking,
    FieldItemCountOutOfRange,
    FieldUnwanted,
    ImageFormatInvalid,
    FieldInvalid,
    /// Not a UTF-8 JSON object at all (no field problems).
    BadRequest,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FieldLacking => "FieldLacking",
            Reason::FieldItemCountOutOfRange => "FieldItemCountOutOfRange",
            Reason::FieldUnwanted => "FieldUnwanted",
            Reason::ImageFormatInvalid => "ImageFormatInvalid",
            Reason::FieldInvalid => "FieldInvalid",
            Reason::BadRequest => "BadRequest",
        }
    }
}

/// One validation problem: `{"field": "duration", "reason": "OutOfRange", "message": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldViolation {
    pub field: String,
    pub reason: FieldReason,
    pub message: String,
}

/// Why a body was refused: the envelope's top-level `reason` and `message`, and every field problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
    pub fields: Vec<FieldViolation>,
}

impl Rejection {
    /// A body that is not a UTF-8 JSON object.
    /// One field refused for a reason outside Vidu's rules (e.g. a `callback_url` the gateway may not relay to).
    pub fn field(field: &str, reason: FieldReason, message: String) -> Self {
        Problems::one(Found::new(0, field, reason, message)).into_rejection()
    }

    pub(crate) fn bad_request(message: String) -> Self {
        Self {
            reason: Reason::BadRequest,
            message,
            fields: Vec::new(),
        }
    }
}

/// One problem and where its field sits in the body (for a stable, body-ordered report).
#[derive(Clone, Debug)]
pub(crate) struct Found {
    /// 1-based position of the field's member in the body; 0 for a missing field.
    pub order: usize,
    pub v: FieldViolation,
}

impl Found {
    pub fn new(order: usize, field: &str, reason: FieldReason, message: String) -> Self {
        Self {
            order,
            v: FieldViolation {
                field: field.to_owned(),
                reason,
                message,
            },
        }
    }

    fn top_level(&self) -> Reason {
        self.v.reason.top_level()
    }
}

/// At least one problem: what a refused body has (a `Rejection` is made from nothing less).
#[derive(Debug)]
pub(crate) struct Problems {
    first: Found,
    rest: Vec<Found>,
}

impl Problems {
    pub fn one(found: Found) -> Self {
        Self {
            first: found,
            rest: Vec::new(),
        }
    }

    /// `Ok` when `found` is empty, else its problems.
    pub fn check(found: Vec<Found>) -> Result<(), Problems> {
        let mut found = found.into_iter();
        match found.next() {
            None => Ok(()),
            Some(first) => Err(Self {
                first,
                rest: found.collect(),
            }),
        }
    }

    /// Both values, or every problem of either (those of `a` first).
    pub fn join<A, B>(a: Result<A, Problems>, b: Result<B, Problems>) -> Result<(A, B), Problems> {
        match (a, b) {
            (Ok(a), Ok(b)) => Ok((a, b)),
            (Err(mut p), Err(q)) => {
                p.rest.push(q.first);
                p.rest.extend(q.rest);
                Err(p)
            }
            (Err(p), Ok(_)) | (Ok(_), Err(p)) => Err(p),
        }
    }

    /// The refusal: every problem in body order (missing fields first), the top-level reason of highest
    /// precedence, and a message naming the fields with the first problem of that reason in full (clients that
    /// log only `message` see the fix too).
    pub fn into_rejection(self) -> Rejection {
        // Earliest in the body among the problems of the winning reason; ties keep the order they were found in.
        let lead = self.rest.iter().fold(&self.first, |lead, p| {
            if (p.top_level(), p.order) < (lead.top_level(), lead.order) {
                p
            } else {
                lead
            }
        });
        let reason = lead.top_level();
        let lead_message = lead.v.message.clone();
        let mut all = self.rest;
        all.insert(0, self.first);
        all.sort_by_key(|p| p.order);
        let mut names: Vec<&str> = Vec::new();
        for p in &all {
            if !names.contains(&p.v.field.as_str()) {
                names.push(&p.v.field);
            }
        }
        let message = match names.as_slice() {
            [one] => format!("invalid field: {one} — {lead_message}"),
            _ => format!(
                "invalid fields: {} — {lead_message} (and {} more in metadata.fields)",
                names.join(", "),
                names.len() - 1
            ),
        };
        Rejection {
            reason,
            message,
            fields: all.into_iter().map(|p| p.v).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_serialise_to_their_names() {
        for r in FieldReason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
            assert_eq!(FieldReason::from_code(r.as_str()), r);
        }
        assert_eq!(FieldReason::from_code("range"), FieldReason::Invalid);
        for r in [
            Reason::FieldLacking,
            Reason::FieldItemCountOutOfRange,
            Reason::FieldUnwanted,
            Reason::ImageFormatInvalid,
            Reason::FieldInvalid,
            Reason::BadRequest,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    #[test]
    fn the_top_level_reason_follows_vidus_precedence() {
        let found = |order, reason| Found::new(order, "f", reason, String::new());
        let r = Problems::join::<(), ()>(
            Err(Problems::one(found(3, FieldReason::WrongType))),
            Err(Problems::one(found(2, FieldReason::Unknown))),
        )
        .unwrap_err()
        .into_rejection();
        assert_eq!(r.reason, Reason::FieldUnwanted);
        assert!(Reason::FieldLacking < Reason::FieldItemCountOutOfRange);
        assert!(Reason::FieldUnwanted < Reason::ImageFormatInvalid);
        assert!(Reason::ImageFormatInvalid < Reason::FieldInvalid);
        assert!(Problems::check(Vec::new()).is_ok());
    }
}
