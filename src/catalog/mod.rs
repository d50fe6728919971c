//! The model catalog: what each model accepts and what it costs (`[models.<name>]`), the seed catalog, and the
//! [`Model`] handle a validated request carries, so later phases never look a model up by name again.

pub mod pricing;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};

use pricing::{Decimal, Price};

/// The catalog as configured: model name → entry.
pub type Catalog = BTreeMap<String, ModelSpec>;

/// One catalog entry: what a model accepts and what it costs.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub durations: DurationRange,
    pub resolutions: Vec<String>,
    pub default_resolution: String,
    #[serde(default = "default_prompt_max_chars")]
    pub prompt_max_chars: usize,
    #[serde(default)]
    pub audio_default: bool,
    #[serde(default)]
    pub off_peak_with_audio: bool,
    pub credits: CreditTable,
}

fn default_prompt_max_chars() -> usize {
    2000
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DurationRange {
    pub min: u32,
    pub max: u32,
    pub default: u32,
}

/// Per resolution: `estimate = base[res] + per_second[res] × duration`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreditTable {
    pub base: BTreeMap<String, Decimal>,
    pub per_second: BTreeMap<String, Decimal>,
}

/// The built-in configuration, whose `[models.*]` tables are the seed catalog: the one place it is written.
const BUILT_IN_CONFIG: &str = include_str!("../../config/default.toml");

/// The seed catalog: the four models of Vidu's img2video page, as the built-in configuration (`config/default.toml`)
/// lists them. A configuration without any `[models.*]` table gets this catalog.
pub fn seed_catalog() -> Result<Catalog, String> {
    #[derive(Deserialize)]
    struct BuiltIn {
        models: Catalog,
    }
    match toml::from_str::<BuiltIn>(BUILT_IN_CONFIG) {
        Ok(b) if !b.models.is_empty() => Ok(b.models),
        Ok(_) => Err(
            "the built-in configuration has no [models.*] table: the seed catalog is empty".into(),
        ),
        Err(e) => Err(format!(
            "the seed catalog in the built-in configuration does not parse: {}",
            e.message()
        )),
    }
}

/// `"720p"` → 720; `None` for anything that is not `<digits>p`.
pub fn resolution_rank(res: &str) -> Option<u32> {
    let digits = res.strip_suffix('p')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Model names as they may appear in a config key and a request: 1–64 of `[A-Za-z0-9._-]`.
pub fn valid_model_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A model of a catalog: its name and entry, borrowed from the catalog it was found in. Holding one means the
/// model is in that catalog and its default resolution is offered with a price (configuration validation refuses
/// a catalog where that is not so). Serialises as its name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Model<'c> {
    name: &'c str,
    spec: &'c ModelSpec,
    default: Offer<'c>,
}

impl<'c> Model<'c> {
    /// The model called `name`, when `catalog` has a usable entry for it.
    pub fn find(catalog: &'c Catalog, name: &str) -> Option<Self> {
        let (name, spec) = catalog.get_key_value(name)?;
        let default = offer(spec, &spec.default_resolution)?;
        Some(Self {
            name,
            spec,
            default,
        })
    }

    pub fn name(&self) -> &'c str {
        self.name
    }

    pub fn spec(&self) -> &'c ModelSpec {
        self.spec
    }

    /// `resolution` as this model offers it, with its price; `None` when the model does not offer it.
    pub fn offer(&self, resolution: &str) -> Option<Offer<'c>> {
        offer(self.spec, resolution)
    }

    /// The resolution a request without one runs at.
    pub fn default_offer(&self) -> Offer<'c> {
        self.default
    }
}

impl Serialize for Model<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

/// A resolution a model offers, with its price: only a [`Model`] hands these out, and only for a resolution in
/// its list that its credit table prices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer<'c> {
    resolution: &'c str,
    price: Price,
}

impl<'c> Offer<'c> {
    pub fn resolution(&self) -> &'c str {
        self.resolution
    }

    pub fn price(&self) -> Price {
        self.price
    }
}

fn offer<'c>(spec: &'c ModelSpec, resolution: &str) -> Option<Offer<'c>> {
    let resolution = spec.resolutions.iter().find(|r| *r == resolution)?;
    Some(Offer {
        resolution,
        price: Price {
            base: *spec.credits.base.get(resolution)?,
            per_second: *spec.credits.per_second.get(resolution)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_catalog_parses_to_the_four_models_of_the_docs_page() {
        let c = seed_catalog().unwrap();
        assert_eq!(
            c.keys().map(String::as_str).collect::<Vec<_>>(),
            ["viduq1", "viduq2", "viduq3-pro", "viduq3-turbo"]
        );
        assert_eq!(c["viduq1"].durations.max, 5);
        assert_eq!(c["viduq1"].resolutions, ["1080p"]);
        assert_eq!(c["viduq2"].durations.max, 10);
        assert_eq!(c["viduq3-pro"].durations.max, 16);
        assert!(c["viduq3-pro"].audio_default);
        assert!(!c["viduq2"].audio_default);
    }

    #[test]
    fn resolution_ranks() {
        assert_eq!(resolution_rank("1080p"), Some(1080));
        assert_eq!(resolution_rank("p"), None);
        assert_eq!(resolution_rank("4k"), None);
    }

    #[test]
    fn a_model_offers_the_resolutions_it_lists_and_prices() {
        let c = seed_catalog().unwrap();
        let m = Model::find(&c, "viduq2").unwrap();
        assert_eq!(m.name(), "viduq2");
        assert_eq!(m.default_offer().resolution(), "720p");
        let p = m.offer("1080p").unwrap().price();
        assert_eq!(
            (p.base, p.per_second),
            (Decimal::from_int(40), Decimal::from_int(15))
        );
        assert_eq!(m.offer("4k"), None);
        assert!(Model::find(&c, "viduq9").is_none());
        assert_eq!(serde_json::to_value(m).unwrap(), "viduq2");
    }

    #[test]
    fn an_entry_that_does_not_price_its_resolutions_offers_none_of_the_unpriced() {
        let mut c = seed_catalog().unwrap();
        let spec = c.get_mut("viduq2").unwrap();
        spec.credits.base.remove("1080p");
        let m = Model::find(&c, "viduq2").unwrap();
        assert_eq!(m.offer("1080p"), None);
        c.get_mut("viduq2")
            .unwrap()
            .credits
            .per_second
            .remove("720p");
        assert!(
            Model::find(&c, "viduq2").is_none(),
            "its default is unpriced"
        );
    }
}
