//! The effective parameters: the request as Vidu will run it — the caller's values, else the defaults the field
//! table names (the model's catalog entry, or Vidu's documented defaults) — and its credit estimate.

use serde::Serialize;

use super::fields::{DEFAULT_MOVEMENT_AMPLITUDE, DEFAULT_WM_POSITION, FIELDS, Fields};
use crate::catalog::pricing::Price;
use crate::catalog::{Model, Offer};
use crate::config::Settings;

/// The request as Vidu will run it: the caller's values, else the defaults. Borrows the catalog it was validated
/// against (`'c`).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(
    as = EffectiveParameters,
    description = "The request as Vidu will run it: your values, else the defaults (the model's catalog entry or \
                   Vidu's documented defaults, listed in `defaulted`) and what policy changed."
)]
pub struct Effective<'c> {
    #[schema(value_type = String)]
    pub model: Model<'c>,
    pub duration: u32,
    pub resolution: &'c str,
    pub audio: bool,
    pub off_peak: bool,
    pub is_rec: bool,
    /// 0 = random.
    pub seed: u32,
    pub movement_amplitude: String,
    pub watermark: bool,
    pub wm_position: u8,
    pub bgm: bool,
    /// Absent or `null`: not sent (Vidu's default applies).
    pub audio_type: Option<String>,
    /// Length of the prompt in characters (the prompt itself is not kept: prompts are never logged).
    pub prompt_chars: usize,
    /// The caller's `callback_url`, when set (the gateway relays Vidu's callbacks to it).
    pub callback_url: Option<String>,
    /// Absent or `null`: not sent (Vidu recommends a voice).
    pub voice_id: Option<String>,
    /// The fields whose value came from a default rather than the body, in the docs' order.
    pub defaulted: Vec<&'static str>,
    /// The model's price at `resolution`.
    #[serde(skip)]
    price: Price,
}

impl Effective<'_> {
    /// The credit estimate for this request as it stands.
    pub fn estimate(&self, settings: &Settings) -> u64 {
        self.estimate_with_off_peak(settings, self.off_peak)
    }

    /// The estimate of the same request with `off_peak` set to `off_peak` (the quote shows both). The price is the
    /// catalog's the request was validated against; `settings` gives `[pricing]`.
    pub fn estimate_with_off_peak(&self, settings: &Settings, off_peak: bool) -> u64 {
        self.price
            .estimate(self.duration, off_peak, self.is_rec, &settings.pricing)
    }
}

/// The effective parameters of a valid body.
pub(crate) fn effective<'c>(model: Model<'c>, offer: Offer<'c>, f: &Fields<'_>) -> Effective<'c> {
    let spec = model.spec();
    let defaulted = FIELDS
        .iter()
        .zip(f.given())
        .filter(|(field, given)| field.absent.listed() && !given)
        .map(|(field, _)| field.name)
        .collect();
    let owned = |v: &Option<super::fields::Given<'_, super::fields::Text<'_>>>| {
        v.as_ref().map(|g| g.value.clone().into_owned())
    };
    Effective {
        model,
        duration: f
            .duration
            .and_then(|d| u32::try_from(d.value).ok())
            .unwrap_or(spec.durations.default),
        resolution: offer.resolution(),
        audio: f.audio.map_or(spec.audio_default, |g| g.value),
        off_peak: f.off_peak.is_some_and(|g| g.value),
        is_rec: f.is_rec.is_some_and(|g| g.value),
        seed: f
            .seed
            .and_then(|s| u32::try_from(s.value).ok())
            .unwrap_or(0),
        movement_amplitude: f
            .movement_amplitude
            .as_ref()
            .map_or(DEFAULT_MOVEMENT_AMPLITUDE, |g| &g.value)
            .to_owned(),
        watermark: f.watermark.is_some_and(|g| g.value),
        wm_position: f
            .wm_position
            .and_then(|p| u8::try_from(p.value).ok())
            .unwrap_or(DEFAULT_WM_POSITION),
        bgm: f.bgm.is_some_and(|g| g.value),
        audio_type: owned(&f.audio_type),
        prompt_chars: f.prompt.as_ref().map_or(0, |p| p.value.chars().count()),
        callback_url: owned(&f.callback_url).filter(|u| !u.is_empty()),
        voice_id: owned(&f.voice_id),
        defaulted,
        price: offer.price(),
    }
}
