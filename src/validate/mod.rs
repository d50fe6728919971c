//! Validation of an img2video body against the model catalog: every problem at once, or the effective parameters
//! with the catalog entries they resolved to.
//!
//! The body's top level is read into borrowed members ([`members`]), each known field is typed and checked against
//! the one field table and its rules ([`fields`]), problems are reported with Vidu's reasons and precedence
//! ([`reasons`]), and a valid body becomes its effective parameters ([`effective`]). `images[0]` is checked by
//! [`image`] without decoding the image. Forwarding the body (byte splicing) is `crate::forward::rewrite`'s.

pub mod effective;
pub mod fields;
pub mod image;
pub mod members;
pub mod reasons;
pub mod scan;

use crate::config::Settings;
pub use effective::Effective;
use image::ImageInfo;
use reasons::Problems;
pub use reasons::{FieldReason, FieldViolation, Reason, Rejection};

/// A valid request: its effective parameters, the image check's result, and the caller's bytes. Borrows the body
/// and the settings it was validated against.
#[derive(Clone, Debug)]
pub struct Validated<'a> {
    pub params: Effective<'a>,
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
}

/// Validates `body` against the catalog of `settings`: the effective parameters, or every problem at once.
pub fn validate<'a>(body: &'a [u8], settings: &'a Settings) -> Result<Validated<'a>, Rejection> {
    validate_with(body, settings, None)
}

/// The verdict on a body read by [`scan::BodyScanner`]: the one the whole body would get. The validated body is
/// the skeleton (what forwarding rewrites to build the rest of the body after the `images` value).
pub fn validate_scanned<'a>(
    scanned: &'a scan::Scanned,
    settings: &'a Settings,
) -> Result<Validated<'a>, Rejection> {
    if let Some(problem) = &scanned.problem {
        return Err(Rejection::bad_request(problem.clone()));
    }
    validate_with(&scanned.skeleton, settings, scanned.image.as_ref())
}

/// `image`: the verdict on `images[0]` when the body holds its string left out (a skeleton).
fn validate_with<'a>(
    body: &'a [u8],
    settings: &'a Settings,
    image: Option<&Result<ImageInfo, String>>,
) -> Result<Validated<'a>, Rejection> {
    let (_, members) = members::parse_members(body).map_err(Rejection::bad_request)?;
    let fields::Read {
        fields,
        mut refused,
        unknown,
        stripped,
    } = fields::read(&members, settings.validation.unknown_fields);

    // What is resolved (each takes its own field's type or duplicate problem).
    let model = fields::resolve_model(&fields, &mut refused, &settings.models);
    let image = fields::resolve_image(&fields, &mut refused, image);
    let ctx = fields::Ctx {
        model: model.as_ref().ok().copied(),
        cross_field_inputs_ok: refused.off_peak.is_none() && refused.audio.is_none(),
    };
    let model = model.and_then(|m| fields::resolve_offer(m, &fields, &mut refused).map(|o| (m, o)));

    // Everything else: unknown fields, the rules, and the type and duplicate problems no resolver took.
    let mut others = unknown;
    others.extend(fields::rule_problems(&fields, &ctx));
    others.extend(refused.into_vec());

    let (((model, offer), image), ()) = Problems::join(
        Problems::join(model.map_err(Problems::one), image.map_err(Problems::one)),
        Problems::check(others),
    )
    .map_err(Problems::into_rejection)?;
    Ok(Validated {
        params: effective::effective(model, offer, &fields),
        stripped,
        image,
        body,
    })
}

#[cfg(test)]
mod tests;
