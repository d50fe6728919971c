//! Credit prices as exact decimals and the one estimate of a task's credits:
//! `ceil((base + per_second × duration) × (off_peak ? off_peak_factor : 1)) + (is_rec ? recommended_prompt_credits : 0)`,
//! computed exactly in integers (ceil(40 × 0.3) is 12, where binary floating point gives 13).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Decimal places a price may carry; prices are held as integers of 10⁻⁶ credit.
const SCALE: i128 = 1_000_000;

/// A non-negative decimal amount (a price, or a factor such as `off_peak_factor`), exact to 6 decimal places.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Decimal(i64);

impl Decimal {
    pub const ONE: Decimal = Decimal(SCALE as i64);

    pub fn from_int(v: u32) -> Self {
        Decimal(i64::from(v) * SCALE as i64)
    }

    /// Parses `"12"`, `"0.3"`, `"7.125"`; refuses signs, exponents and more than 6 decimals.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || !(frac.is_empty() || digits(frac)) {
            return Err(format!("`{text}` is not a non-negative decimal number"));
        }
        let frac = frac.trim_end_matches('0');
        if frac.len() > 6 {
            return Err(format!("`{text}` has more than 6 decimal places"));
        }
        let int: i64 = int.parse().map_err(|_| format!("`{text}` is too large"))?;
        let frac_units: i64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<6}")
                .parse()
                .map_err(|_| format!("`{text}` is not a number"))?
        };
        int.checked_mul(SCALE as i64)
            .and_then(|v| v.checked_add(frac_units))
            .filter(|v| *v <= i64::MAX / 4)
            .map(Decimal)
            .ok_or_else(|| format!("`{text}` is too large"))
    }

    fn units(self) -> i128 {
        i128::from(self.0)
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let int = self.0 / SCALE as i64;
        let frac = self.0 % SCALE as i64;
        if frac == 0 {
            write!(f, "{int}")
        } else {
            let frac = format!("{frac:06}");
            write!(f, "{int}.{}", frac.trim_end_matches('0'))
        }
    }
}

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 % SCALE as i64 == 0 {
            s.serialize_i64(self.0 / SCALE as i64)
        } else {
            // Display gives the exact decimal; f64 round-trips it for printing.
            s.serialize_f64(self.to_string().parse::<f64>().unwrap_or_default())
        }
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Int(i) => i.to_string(),
            // Rust prints the shortest decimal that round-trips: 0.3 -> "0.3", not 0.299999…
            Raw::Float(f) => format!("{f}"),
            Raw::Text(t) => t,
        };
        Decimal::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `[pricing]`: what the estimate adds to a model's prices.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingSettings {
    pub off_peak_factor: Decimal,
    pub recommended_prompt_credits: u32,
}

impl Default for PricingSettings {
    fn default() -> Self {
        Self {
            off_peak_factor: Decimal::parse("0.5").unwrap_or(Decimal::ONE),
            recommended_prompt_credits: 10,
        }
    }
}

/// What a model charges at one resolution (from its credit table; see [`crate::catalog::Offer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    pub base: Decimal,
    pub per_second: Decimal,
}

impl Price {
    /// The estimate of a task at this price.
    pub fn estimate(
        self,
        duration_secs: u32,
        off_peak: bool,
        is_rec: bool,
        pricing: &PricingSettings,
    ) -> u64 {
        estimate(&EstimateInput {
            base: self.base,
            per_second: self.per_second,
            duration_secs,
            off_peak,
            off_peak_factor: pricing.off_peak_factor,
            is_rec,
            recommended_prompt_credits: pricing.recommended_prompt_credits,
        })
    }
}

/// Everything an estimate depends on, already resolved (model defaults and policy applied).
#[derive(Clone, Copy, Debug)]
pub struct EstimateInput {
    pub base: Decimal,
    pub per_second: Decimal,
    pub duration_secs: u32,
    pub off_peak: bool,
    pub off_peak_factor: Decimal,
    pub is_rec: bool,
    pub recommended_prompt_credits: u32,
}

/// `ceil((base + per_second × duration) × (off_peak ? factor : 1))`, then `+ recommended_prompt_credits` when
/// `is_rec` — computed exactly in integers.
pub fn estimate(input: &EstimateInput) -> u64 {
    let raw = input.base.units() + input.per_second.units() * i128::from(input.duration_secs);
    let factor = if input.off_peak {
        input.off_peak_factor.units()
    } else {
        SCALE
    };
    let scaled = raw * factor; // units of 10⁻¹²
    let denom = SCALE * SCALE;
    let credits = (scaled + denom - 1) / denom;
    let rec = if input.is_rec {
        i128::from(input.recommended_prompt_credits)
    } else {
        0
    };
    u64::try_from(credits + rec).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    fn input(base: &str, ps: &str, dur: u32) -> EstimateInput {
        EstimateInput {
            base: d(base),
            per_second: d(ps),
            duration_secs: dur,
            off_peak: false,
            off_peak_factor: d("0.5"),
            is_rec: false,
            recommended_prompt_credits: 10,
        }
    }

    #[test]
    fn the_design_example_is_exact_not_binary_floating_point() {
        // ceil(40 × 0.3) = 12, where 40.0 * 0.3 in f64 is 12.000000000000002 -> 13.
        let mut i = input("40", "0", 5);
        i.off_peak = true;
        i.off_peak_factor = d("0.3");
        assert_eq!(estimate(&i), 12);
    }

    #[test]
    fn base_plus_per_second_times_duration() {
        assert_eq!(estimate(&input("5", "10", 5)), 55);
        assert_eq!(estimate(&input("0", "24", 16)), 384);
    }

    #[test]
    fn off_peak_rounds_up_and_is_rec_adds_after_rounding() {
        let mut i = input("0", "7", 5); // 35
        i.off_peak = true; // 17.5 -> 18
        assert_eq!(estimate(&i), 18);
        i.is_rec = true;
        assert_eq!(estimate(&i), 28);
    }

    #[test]
    fn fractional_prices_stay_exact() {
        assert_eq!(estimate(&input("0.1", "0.2", 1)), 1); // 0.3 -> 1
        assert_eq!(estimate(&input("0", "0.333333", 3)), 1); // 0.999999 -> 1
        assert_eq!(estimate(&input("0", "0", 3)), 0);
    }

    #[test]
    fn parse_refuses_what_is_not_a_price() {
        for bad in ["-1", "1e3", "", ".5", "1.2345678", "abc", "1.2.3"] {
            assert!(Decimal::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(d("0.50").to_string(), "0.5");
        assert_eq!(d("12").to_string(), "12");
    }

    #[test]
    fn toml_floats_deserialize_to_their_shortest_decimal() {
        #[derive(Deserialize)]
        struct T {
            f: Decimal,
        }
        let t: T = toml::from_str("f = 0.3").unwrap();
        assert_eq!(t.f, d("0.3"));
        let t: T = toml::from_str("f = 7").unwrap();
        assert_eq!(t.f, d("7"));
    }
}
