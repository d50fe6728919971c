//! Configuration: load a TOML file (or the built-in one), apply `VIDU_GW__SECTION__KEY` overrides, read `*_file`
//! secrets, fill code defaults, and `validate()` — every problem reported with the key at fault.

mod env;
mod hours;
mod live;
mod schema;
mod secret;
mod settings;
mod shape;
mod validate;
mod values;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use hours::HourWindow;
pub use live::LiveConfig;
pub use secret::{REDACTED, Secret};
pub use settings::*;
pub use values::{BaseUrl, HostPattern, Zone};

/// The built-in configuration (`config/default.toml`), compiled into the binary: sandbox upstream and a
/// development HS256 secret. Used when `--config` is not given.
pub const BUILTIN_CONFIG: &str = include_str!("../../config/default.toml");

/// The development secret of the built-in configuration. `serve` warns loudly when it is in use, and refuses it
/// against the real Vidu.
pub const DEV_HS256_SECRET: &str = "vidu-gateway-development-secret-do-not-use-in-production";
/// The relay secret of the built-in file: refused against the real Vidu, like the development HS256 secret.
pub const DEV_RELAY_SECRET: &str = "vidu-gateway-development-relay-secret";

/// Prefix of environment overrides: `VIDU_GW__UPSTREAM__API_KEY` sets `upstream.api_key`.
pub const ENV_PREFIX: &str = "VIDU_GW";

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

/// A configuration that could not be loaded: each line names the key at fault and what to change. No message
/// quotes the file's text (a line may hold a secret).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: Origin, message: String },
    #[error("{} is invalid:\n  - {}", subject(origin, problems), problems.join("\n  - "))]
    Invalid {
        origin: Origin,
        problems: Vec<String>,
    },
}

/// What is invalid: the file, or the file with its environment overrides when a variable is to blame.
fn subject(origin: &Origin, problems: &[String]) -> String {
    if problems.iter().any(|p| p.starts_with(env::BLAME)) {
        format!("{origin} with its {ENV_PREFIX}__* environment overrides")
    } else {
        origin.to_string()
    }
}

/// A digest of everything a load read: the file's bytes, the environment overrides and the files the
/// configuration names (`Settings::files_read`). Equal digests: a reload would read exactly the same again.
/// Kept in memory only and never shown (it covers secrets).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InputDigest([u8; 32]);

impl fmt::Debug for InputDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InputDigest(..)")
    }
}

/// A validated configuration and what identifies it.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub settings: Settings,
    pub origin: Origin,
    /// Short hash of the effective configuration, secrets redacted (`version_of`); shown in `/readyz`,
    /// `/gateway/v1/config` and the logs.
    pub version: String,
    /// What this configuration was loaded from.
    pub inputs: InputDigest,
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

    /// True when `other` is the same effective configuration, secrets included.
    pub fn same_settings(&self, other: &LoadedConfig) -> bool {
        self.settings.changed_secrets(&other.settings).is_empty()
            && self.redacted_toml() == other.redacted_toml()
    }
}

impl Settings {
    pub fn redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// Every secret, by key.
    pub fn secrets(&self) -> Vec<(String, &Secret)> {
        let mut all = vec![
            ("upstream.api_key".to_owned(), &self.upstream.api_key),
            ("auth.hs256_secret".to_owned(), &self.auth.hs256_secret),
            ("state.redis_url".to_owned(), &self.state.redis_url),
            (
                "state.redis_password_file".to_owned(),
                &self.state.redis_password,
            ),
            (
                "callbacks.relay_secret".to_owned(),
                &self.callbacks.relay_secret,
            ),
        ];
        for (team, t) in &self.callbacks.teams {
            all.push((format!("callbacks.teams.{team}.secret"), &t.secret));
        }
        all
    }

    /// The keys of the secrets whose values differ in `other` (names only: values are never shown).
    pub fn changed_secrets(&self, other: &Settings) -> Vec<String> {
        let before: BTreeMap<String, &Secret> = self.secrets().into_iter().collect();
        let after: BTreeMap<String, &Secret> = other.secrets().into_iter().collect();
        let mut changed: Vec<String> = self
            .secrets()
            .into_iter()
            .filter(|(k, v)| after.get(k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        changed.extend(
            other
                .secrets()
                .into_iter()
                .filter(|(k, _)| !before.contains_key(k))
                .map(|(k, _)| k),
        );
        changed
    }

    /// The keys whose value differs in `other` (added, removed or changed), dotted, sorted; a changed secret is
    /// named by its key, its value never read here.
    pub fn changed_keys(&self, other: &Settings) -> Vec<String> {
        fn flatten(v: &toml::Value, path: &mut Vec<String>, out: &mut BTreeMap<String, String>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        path.push(k.clone());
                        flatten(v, path, out);
                        path.pop();
                    }
                }
                other => {
                    out.insert(path.join("."), other.to_string());
                }
            }
        }
        let flat = |s: &Settings| {
            let mut out = BTreeMap::new();
            if let Ok(v) = toml::Value::try_from(s) {
                flatten(&v, &mut Vec::new(), &mut out);
            }
            out
        };
        let (before, after) = (flat(self), flat(other));
        let mut keys: std::collections::BTreeSet<String> = before
            .iter()
            .filter(|(k, v)| after.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .chain(after.keys().filter(|k| !before.contains_key(*k)).cloned())
            .collect();
        keys.extend(self.changed_secrets(other));
        keys.into_iter().collect()
    }

    /// Every file read when this configuration is loaded or put in force (secrets, public keys, a JWKS file):
    /// a change to any of them is a change of the configuration's inputs (a key added here that names a file
    /// belongs in this list).
    pub fn files_read(&self) -> Vec<&Path> {
        let mut files: Vec<&Path> = [
            self.upstream.api_key_file.as_deref(),
            self.auth.hs256_secret_file.as_deref(),
            self.auth.jwks_file.as_deref(),
            self.state.redis_password_file.as_deref(),
            self.state.redis_ca_file.as_deref(),
            self.callbacks.relay_secret_file.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        files.extend(
            self.callbacks
                .teams
                .values()
                .filter_map(|t| t.secret_file.as_deref()),
        );
        files.extend(self.auth.public_key_files.iter().map(PathBuf::as_path));
        files
    }
}

/// One load: a digest of what it read (`None` when the file could not be read) and what came of it.
#[derive(Debug)]
pub struct Attempt {
    pub inputs: Option<InputDigest>,
    pub result: Result<LoadedConfig, ConfigError>,
}

/// Loads `path` (or the built-in file) with the process environment's overrides.
pub fn load(path: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
    load_attempt(path).result
}

/// `load`, with the digest of what was read (for a reload to tell whether anything changed).
pub fn load_attempt(path: Option<&Path>) -> Attempt {
    let env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    attempt_with_env(path, env)
}

/// Loads `path` (or the built-in file) with the given environment (only `VIDU_GW__*` entries are read).
pub fn load_with_env(
    path: Option<&Path>,
    env: HashMap<String, String>,
) -> Result<LoadedConfig, ConfigError> {
    attempt_with_env(path, env).result
}

fn attempt_with_env(path: Option<&Path>, env: HashMap<String, String>) -> Attempt {
    let (text, origin) = match path {
        None => (BUILTIN_CONFIG.to_owned(), Origin::Builtin),
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => (text, Origin::File(p.to_owned())),
            Err(source) => {
                return Attempt {
                    inputs: None,
                    result: Err(ConfigError::Read {
                        path: p.to_owned(),
                        source,
                    }),
                };
            }
        },
    };
    let (inputs, result) = load_inputs(&text, origin, &env);
    Attempt {
        inputs: Some(inputs),
        result,
    }
}

/// The layering itself: `text` (TOML), then environment overrides, then `*_file` secrets, seed catalog and checks.
pub fn load_from_str(
    text: &str,
    origin: Origin,
    env: HashMap<String, String>,
) -> Result<LoadedConfig, ConfigError> {
    load_inputs(text, origin, &env).1
}

fn load_inputs(
    text: &str,
    origin: Origin,
    env: &HashMap<String, String>,
) -> (InputDigest, Result<LoadedConfig, ConfigError>) {
    let mut digest = Sha256::new();
    digest.update(text.as_bytes());
    let sorted: BTreeMap<&String, &String> = env.iter().collect();
    for (k, v) in sorted {
        for part in [k, v] {
            digest.update([0u8]);
            digest.update(part.as_bytes());
        }
    }
    let result = layer(text, &origin, env, &mut digest);
    let inputs = InputDigest(digest.finalize().into());
    let result = result.map(|settings| LoadedConfig {
        version: version_of(&settings),
        settings,
        origin,
        inputs,
    });
    (inputs, result)
}

/// Parses, applies the environment, checks the shape, converts, reads the `*_file` secrets and validates; every
/// problem of every stage is reported together. The files the configuration names are added to `digest`.
fn layer(
    text: &str,
    origin: &Origin,
    env: &HashMap<String, String>,
    digest: &mut Sha256,
) -> Result<Settings, ConfigError> {
    let mut doc = parse_toml(text).map_err(|message| ConfigError::Parse {
        origin: origin.clone(),
        message,
    })?;
    let invalid = |problems| ConfigError::Invalid {
        origin: origin.clone(),
        problems,
    };
    let mut problems = Vec::new();
    let from_env = env::apply(&mut doc, env, &mut problems);
    let shape = shape::check(&mut doc, &from_env);
    problems.extend(shape.problems);
    let mut settings = match Settings::deserialize(toml::Value::Table(doc)) {
        Ok(s) => s,
        Err(e) => {
            // Not expected once the shape is checked; the message may quote a value: quotes are not shown.
            problems.push(without_quoted_text(e.message()));
            return Err(invalid(problems));
        }
    };
    for file in settings.files_read() {
        digest.update([0u8]);
        digest.update(file.as_os_str().as_encoded_bytes());
        match std::fs::read(file) {
            Ok(bytes) => digest.update(Sha256::digest(&bytes)),
            Err(e) => digest.update(format!("{:?}", e.kind()).as_bytes()),
        }
    }
    let mut semantic = Vec::new();
    settings.read_secret_files(&mut semantic);
    if settings.models.is_empty() {
        match crate::catalog::seed_catalog() {
            Ok(seed) => settings.models = seed,
            Err(e) => semantic.push(e),
        }
    }
    validate::validate(&settings, &mut semantic);
    // A refused value was removed and its key took the code default: what validation says about that key now
    // is noise beside the real problem, already reported.
    semantic.retain(|p| !shape.removed.iter().any(|key| about(p, key)));
    problems.extend(semantic);
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(invalid(problems))
    }
}

/// True when `problem` is about `key` (starts with it as a whole key).
fn about(problem: &str, key: &str) -> bool {
    problem
        .strip_prefix(key)
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
}

/// Parses the file. A syntax error names the line, the column and the problem, never the text around it: the
/// line may hold a secret (an unterminated `api_key = "…` is the classic).
fn parse_toml(text: &str) -> Result<toml::Table, String> {
    toml::from_str::<toml::Table>(text).map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let (line, column) = line_column(text, span.start);
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        format!(
            "TOML syntax error{at}: {} (the line is not shown: it may hold a secret)",
            e.message()
        )
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// `message` with any double-quoted text replaced by `"…"`: parser and serde messages quote values.
fn without_quoted_text(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    let rest: Vec<&str> = parts.collect();
    for (i, part) in rest.iter().enumerate() {
        if i % 2 == 0 {
            // `part` is inside quotes: shown only when it closes (an odd trailing quote is kept as is).
            if i + 1 < rest.len() {
                out.push_str("\"…\"");
            } else {
                out.push('"');
                out.push_str(part);
            }
        } else {
            out.push_str(part);
        }
    }
    out
}

/// The configuration's version: a short hash of the effective configuration with every secret redacted and
/// without `server.listen`/`server.metrics_listen` (replicas on one host listen on different ports). It is never a
/// function of a secret: configurations that differ only in a secret's value have the same version (a reload
/// that rotates a secret is logged with the secret's key).
pub fn version_of(settings: &Settings) -> String {
    let mut value =
        toml::Value::try_from(settings).unwrap_or(toml::Value::Table(toml::Table::new()));
    if let Some(toml::Value::Table(server)) = value.get_mut("server") {
        server.remove("listen");
        server.remove("metrics_listen");
    }
    let text = toml::to_string(&value).unwrap_or_else(|_| settings.redacted_toml());
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

impl Settings {
    /// Reads every `*_file` secret (trimmed). Setting both the value and its file is an error.
    fn read_secret_files(&mut self, problems: &mut Vec<String>) {
        // A file key set to "" is unset, as a secret set to "" is.
        for file in [
            &mut self.upstream.api_key_file,
            &mut self.auth.hs256_secret_file,
            &mut self.state.redis_password_file,
            &mut self.state.redis_ca_file,
            &mut self.callbacks.relay_secret_file,
        ]
        .into_iter()
        .chain(
            self.callbacks
                .teams
                .values_mut()
                .map(|t| &mut t.secret_file),
        ) {
            if file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
                *file = None;
            }
        }
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
        read_secret_file(
            "state.redis_password",
            &mut self.state.redis_password,
            self.state.redis_password_file.as_deref(),
            problems,
        );
        read_secret_file(
            "callbacks.relay_secret",
            &mut self.callbacks.relay_secret,
            self.callbacks.relay_secret_file.as_deref(),
            problems,
        );
        for (team, t) in &mut self.callbacks.teams {
            read_secret_file(
                &format!("callbacks.teams.{team}.secret"),
                &mut t.secret,
                t.secret_file.as_deref(),
                problems,
            );
        }
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
