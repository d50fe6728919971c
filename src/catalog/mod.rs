//! The model catalog: the seed's four models (from Vidu's img2video page) and helpers to read catalog values.

pub mod pricing;

use std::collections::BTreeMap;

use crate::config::ModelSpec;

/// The seed catalog, exactly as `config/default.toml` ships it (a test keeps the two equal).
///
/// Durations, resolutions, prompt limits and audio defaults are from Vidu's img2video page. Prices are estimates
/// in credits (Vidu's reported `credits` are the truth): q3-pro and q3-turbo per second per resolution from Vidu's
/// price list; q1 80 credits per 5 s 1080p task; plain `viduq2` has no public table, so its figures follow the
/// q2 family's "base + per-second" shape (720p 5 + 10/s, 1080p 40 + 15/s, 540p 5/s).
pub const SEED_CATALOG_TOML: &str = r#"
[models.viduq2]
durations = { min = 1, max = 10, default = 5 }
resolutions = ["540p", "720p", "1080p"]
default_resolution = "720p"
prompt_max_chars = 2000
audio_default = false
off_peak_with_audio = false
credits = { base = { "540p" = 0, "720p" = 5, "1080p" = 40 }, per_second = { "540p" = 5, "720p" = 10, "1080p" = 15 } }

[models.viduq1]
durations = { min = 5, max = 5, default = 5 }
resolutions = ["1080p"]
default_resolution = "1080p"
prompt_max_chars = 2000
audio_default = false
off_peak_with_audio = false
credits = { base = { "1080p" = 0 }, per_second = { "1080p" = 16 } }

[models.viduq3-turbo]
durations = { min = 1, max = 16, default = 5 }
resolutions = ["540p", "720p", "1080p"]
default_resolution = "720p"
prompt_max_chars = 2000
audio_default = true
off_peak_with_audio = false
credits = { base = { "540p" = 0, "720p" = 0, "1080p" = 0 }, per_second = { "540p" = 7, "720p" = 12, "1080p" = 13 } }

[models.viduq3-pro]
durations = { min = 1, max = 16, default = 5 }
resolutions = ["540p", "720p", "1080p"]
default_resolution = "720p"
prompt_max_chars = 2000
audio_default = true
off_peak_with_audio = false
credits = { base = { "540p" = 0, "720p" = 0, "1080p" = 0 }, per_second = { "540p" = 9, "720p" = 20, "1080p" = 24 } }
"#;

/// The seed catalog, parsed.
pub fn seed_catalog() -> BTreeMap<String, ModelSpec> {
    #[derive(serde::Deserialize)]
    struct Doc {
        models: BTreeMap<String, ModelSpec>,
    }
    // The constant is covered by a unit test; an error here would be a build defect, not a runtime condition.
    toml::from_str::<Doc>(SEED_CATALOG_TOML)
        .map(|d| d.models)
        .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_catalog_parses_to_the_four_models_of_the_docs_page() {
        let c = seed_catalog();
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
}
