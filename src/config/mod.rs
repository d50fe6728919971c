//! Configuration: load a TOML file (or the built-in one), apply `VIDU_GW__SECTION__KEY` overrides, read `*_file`
//! secrets, fill code defaults, and `validate()` — every problem reported with the key at fault.

mod live;
mod secret;
mod settings;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Environment, File, FileFormat};
use sha2::{Digest, Sha256};

pub use live::LiveConfig;
pub use secret::{REDACTED, Secret};
pub use settings::*;

/// The built-in configuration (`config/default.toml`), compiled into the binary: sandbox upstream and a
/// development HS256 secret. Used when `--config` is not given.
pub const BUILTIN_CONFIG: &str = include_str!("../../config/default.toml");

/// The development secret of the built-in configuration. `serve` warns loudly when it is in use, and refuses it
/// against the real Vidu.
pub const DEV_HS256_SECRET: &str = "vidu-gateway-development-secret-do-not-use-in-production";

/// Prefix of environment overrides: `VIDU_GW__UPSTREAM__API_KEY` sets `upstream.api_key`.
pub const ENV_PREFIX: &str = "VIDU_GW";

/// Keys whose environment value is a comma-separated list.
const ENV_LIST_KEYS: &[&str] = &[
    "auth.algorithms",
    "auth.public_key_files",
    "policy.defaults.models",
    "policy.defaults.immediate_hours",
];

/// Where a configuration came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Builtin,
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Builtin => f.write_str("built-in config/default.toml"),
            Origin::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A configuration that could not be loaded: each line names the key at fault and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: Origin, message: String },
    #[error("{origin} is invalid:\n  - {}", problems.join("\n  - "))]
    Invalid {
        origin: Origin,
        problems: Vec<String>,
    },
}

/// A validated configuration and what identifies it.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub settings: Settings,
    pub origin: Origin,
    /// Short hash of the effective (redacted) configuration; shown in `/gateway/v1/config` and the logs.
    pub version: String,
}

impl LoadedConfig {
    /// The effective configuration as TOML, every secret redacted.
    pub fn redacted_toml(&self) -> String {
        self.settings.redacted_toml()
    }

    /// True when the built-in development secret verifies tokens.
    pub fn uses_dev_secret(&self) -> bool {
        self.settings.auth.hs256_secret.expose() == DEV_HS256_SECRET
    }
}

impl Settings {
    pub fn redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Loads `path` (or the built-in file) with the process environment's overrides.
pub fn load(path: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
    let env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    load_with_env(path, env)
}

/// Loads `path` (or the built-in file) with the given environment (only `VIDU_GW__*` entries are read).
pub fn load_with_env(
    path: Option<&Path>,
    env: HashMap<String, String>,
) -> Result<LoadedConfig, ConfigError> {
    let (text, origin) = match path {
        None => (BUILTIN_CONFIG.to_owned(), Origin::Builtin),
        Some(p) => (
            std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_owned(),
                source,
            })?,
            Origin::File(p.to_owned()),
        ),
    };
    load_from_str(&text, origin, env)
}

/// The layering itself: `text` (TOML), then environment overrides, then `*_file` secrets, seed catalog and checks.
pub fn load_from_str(
    text: &str,
    origin: Origin,
    env: HashMap<String, String>,
) -> Result<LoadedConfig, ConfigError> {
    let parse_err = |e: &dyn fmt::Display| ConfigError::Parse {
        origin: origin.clone(),
        message: e.to_string(),
    };
    // Parse once with toml first: its errors carry line and column, config-rs's do not.
    toml::from_str::<toml::Table>(text).map_err(|e| parse_err(&e))?;
    let mut environment = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .source(Some(env.into_iter().collect()));
    for key in ENV_LIST_KEYS {
        environment = environment.with_list_parse_key(key);
    }
    let raw = config::Config::builder()
        .add_source(File::from_str(text, FileFormat::Toml))
        .add_source(environment)
        .build()
        .map_err(|e| parse_err(&e))?;
    let mut settings: Settings = raw.try_deserialize().map_err(|e| parse_err(&e))?;

    let mut problems = Vec::new();
    settings.read_secret_files(&mut problems);
    if settings.models.is_empty() {
        settings.models = crate::vidu::catalog::seed_catalog();
    }
    validate::validate(&settings, &mut problems);
    if !problems.is_empty() {
        return Err(ConfigError::Invalid { origin, problems });
    }
    let version = version_of(&settings);
    Ok(LoadedConfig {
        settings,
        origin,
        version,
    })
}

/// A short hash of the effective configuration. Secrets are part of the digest (a rotated key is a new version)
/// but cannot be recovered from 48 bits of a SHA-256.
fn version_of(settings: &Settings) -> String {
    let mut h = Sha256::new();
    h.update(settings.redacted_toml().as_bytes());
    for secret in [
        &settings.upstream.api_key,
        &settings.auth.hs256_secret,
        &settings.state.redis_url,
    ] {
        h.update([0u8]);
        h.update(secret.expose().as_bytes());
    }
    let digest = h.finalize();
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

impl Settings {
    /// Reads every `*_file` secret (trimmed). Setting both the value and its file is an error.
    fn read_secret_files(&mut self, problems: &mut Vec<String>) {
        read_secret_file(
            "upstream.api_key",
            &mut self.upstream.api_key,
            self.upstream.api_key_file.as_deref(),
            problems,
        );
        read_secret_file(
            "auth.hs256_secret",
            &mut self.auth.hs256_secret,
            self.auth.hs256_secret_file.as_deref(),
            problems,
        );
    }
}

fn read_secret_file(
    key: &str,
    value: &mut Secret,
    file: Option<&Path>,
    problems: &mut Vec<String>,
) {
    let Some(file) = file else { return };
    if value.is_set() {
        problems.push(format!(
            "{key} and {key}_file are both set: keep one of them"
        ));
        return;
    }
    match std::fs::read_to_string(file) {
        Ok(text) if text.trim().is_empty() => {
            problems.push(format!("{key}_file: {} is empty", file.display()))
        }
        Ok(text) => *value = Secret::new(text.trim()),
        Err(e) => problems.push(format!("{key}_file: cannot read {}: {e}", file.display())),
    }
}

/// Settings for unit tests: an HS256 secret, then `extra` TOML; everything else at its code default.
#[cfg(test)]
#[allow(clippy::expect_used)]
pub fn test_settings(extra: &str) -> Settings {
    let text = format!(
        "[auth]\nalgorithms = [\"HS256\"]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n{extra}"
    );
    load_from_str(&text, Origin::Builtin, HashMap::new())
        .expect("test settings are valid")
        .settings
}

#[cfg(test)]
mod tests;
