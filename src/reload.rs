//! Live tuning: the configuration is reloaded on SIGHUP and when its file changes (polled, debounced). The new
//! file is validated first and swapped in atomically; an invalid one keeps the old configuration running, is
//! logged with the key at fault and counted in `vidu_gateway_config_reloads_total{outcome}`. Counters and
//! budgets live in the state store, so a reload never resets them, and a changed limit applies at once.
//! One change is one reload: a load that would read exactly what the last attempt read (file, environment,
//! the files it names) is skipped, so an edit followed by SIGHUP is not reloaded again by the file watcher.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;

use crate::auth::Authenticator;
use crate::config::{self, LoadedConfig, Origin, Settings};
use crate::http::app_state::AppState;
use crate::metrics::OutcomeLabels;

/// How often the config file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied { version: String },
    Unchanged,
    Invalid(String),
}

/// What asked for a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP: the operator asked.
    Signal,
    /// The file watcher saw the file's content change.
    FileChange,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChange => "config file changed",
        })
    }
}

/// The keys among `$section.$key` whose value differs between `$old` and `$new`, named as in the file.
macro_rules! changed_keys {
    ($old:ident, $new:ident: $($section:ident . $key:ident),* $(,)?) => {{
        let mut keys: Vec<&'static str> = Vec::new();
        $(
            if $old.$section.$key != $new.$section.$key {
                keys.push(concat!(stringify!($section), ".", stringify!($key)));
            }
        )*
        keys
    }};
}

/// Keys read once at start: a reload that changes them is refused (they need a restart).
fn restart_only(old: &Settings, new: &Settings) -> Vec<&'static str> {
    changed_keys!(old, new:
        server.listen,
        server.metrics_listen,
        server.workers,
        upstream.mode,
        upstream.connect_timeout_ms,
        upstream.request_timeout_ms,
        upstream.pool_idle_timeout_ms,
        state.backend,
        state.ledger_path,
        state.redis_url,
        state.redis_password,
        state.redis_ca_file,
        state.key_prefix,
        state.redis_timeout_ms,
        state.task_retention_days,
        state.spool_path,
        telemetry.log_format,
    )
}

/// Reloads from where the running configuration came from (its file, or the built-in one), unless nothing it
/// would read has changed since the last attempt.
pub fn reload(state: &AppState, trigger: Trigger) -> Outcome {
    let mut attempted = state.config.attempted();
    let current = state.config.current();
    let path = match &current.origin {
        Origin::File(p) => Some(p.clone()),
        Origin::Builtin => None,
    };
    let attempt = config::load_attempt(path.as_deref());
    if attempt.inputs.is_some() && attempt.inputs == *attempted {
        match trigger {
            Trigger::Signal => {
                tracing::info!(
                    config = %current.origin,
                    version_in_force = %current.version,
                    "SIGHUP: the config file, its environment and the files it names are unchanged since the last \
                     reload attempt; nothing to do"
                );
                count(state, "unchanged");
            }
            Trigger::FileChange => {
                tracing::debug!("config file content already loaded");
            }
        }
        return Outcome::Unchanged;
    }
    *attempted = attempt.inputs;
    tracing::info!(config = %current.origin, trigger = %trigger, "reloading the configuration");
    let mut secrets_changed = Vec::new();
    let mut keys_changed = Vec::new();
    let outcome = match attempt.result {
        Err(e) => Outcome::Invalid(e.to_string()),
        Ok(new) => {
            secrets_changed = current.settings.changed_secrets(&new.settings);
            keys_changed = current.settings.changed_keys(&new.settings);
            apply(state, &current, new)
        }
    };
    let audited = |outcome: &str, detail: serde_json::Value| {
        crate::audit::record(
            &state.store,
            crate::audit::entry(
                state.clock.now(),
                "config_reload",
                crate::audit::GATEWAY,
                outcome,
                detail,
            ),
        );
    };
    match &outcome {
        Outcome::Applied { version } => audited(
            "applied",
            serde_json::json!({
                "trigger": trigger.to_string(),
                "version": version,
                "previous": current.version,
                "keys_changed": keys_changed,
                "secrets_changed": secrets_changed,
            }),
        ),
        Outcome::Invalid(why) => audited(
            "refused",
            serde_json::json!({
                "trigger": trigger.to_string(),
                "version_in_force": current.version,
                "keys_changed": keys_changed,
                "why": why,
            }),
        ),
        // Attempted (the inputs changed since the last attempt) but the configuration in force is the same: a
        // fix reverting a refused edit, say.
        Outcome::Unchanged => audited(
            "unchanged",
            serde_json::json!({
                "trigger": trigger.to_string(),
                "version_in_force": current.version,
            }),
        ),
    }
    match &outcome {
        Outcome::Applied { version } => tracing::info!(
            config = %current.origin,
            version = %version,
            previous = %current.version,
            secrets_changed = %secrets_changed.join(","),
            "configuration reloaded"
        ),
        Outcome::Unchanged => tracing::debug!("configuration unchanged"),
        Outcome::Invalid(why) => tracing::error!(
            config = %current.origin,
            version_in_force = %current.version,
            error = %why,
            "configuration reload refused; the previous configuration stays in force"
        ),
    }
    count(
        state,
        match &outcome {
            Outcome::Applied { .. } => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Invalid(_) => "invalid",
        },
    );
    outcome
}

fn count(state: &AppState, outcome: &'static str) {
    state
        .metrics
        .config_reloads
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
}

fn apply(state: &AppState, current: &LoadedConfig, new: LoadedConfig) -> Outcome {
    // Not the version: it leaves out secrets and the listen addresses, and a change to those is a change.
    if new.same_settings(current) {
        return Outcome::Unchanged;
    }
    let restart = restart_only(&current.settings, &new.settings);
    if !restart.is_empty() {
        return Outcome::Invalid(format!(
            "{} changed: these keys are read at start; restart the gateway to change them",
            restart.join(", ")
        ));
    }
    let auth_changed = toml::to_string(&current.settings.auth).ok()
        != toml::to_string(&new.settings.auth).ok()
        || current.settings.auth.hs256_secret != new.settings.auth.hs256_secret;
    if auth_changed {
        let old = state.auth();
        match Authenticator::with_jwks(
            &new.settings.auth,
            state.clock.clone(),
            &state.metrics,
            old.jwks(),
        ) {
            Err(e) => return Outcome::Invalid(format!("{e:#}")),
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                if let Some(j) = fresh.jwks()
                    && old.jwks().is_none_or(|o| !Arc::ptr_eq(o, j))
                {
                    actix_web::rt::spawn(j.clone().run());
                }
                if let Some(o) = old.jwks()
                    && fresh.jwks().is_none_or(|j| !Arc::ptr_eq(o, j))
                {
                    o.stop();
                }
                *state.auth.write().unwrap_or_else(|p| p.into_inner()) = fresh;
            }
        }
    }
    let version = new.version.clone();
    state.config.replace(new);
    Outcome::Applied { version }
}

/// Reloads on every SIGHUP (the binary's `serve` runs this). The handler is installed when this is called, not
/// when the returned future first runs: SIGHUP's default action ends the process, and one sent as soon as the
/// gateway says it is listening must reload it, not kill it.
#[cfg(unix)]
pub fn on_sighup(state: web::Data<AppState>) -> impl std::future::Future<Output = ()> {
    use actix_web::rt::signal::unix::{SignalKind, signal};
    let hup = signal(SignalKind::hangup());
    async move {
        let Ok(mut hup) = hup else {
            tracing::warn!("cannot listen for SIGHUP: reload by editing the config file instead");
            return;
        };
        while hup.recv().await.is_some() {
            reload(&state, Trigger::Signal);
        }
    }
}

/// Watches the config file by content (robust to editors that replace the file and to symlink swaps such as
/// Kubernetes ConfigMaps) and reloads once it has been stable for one poll interval. The first content it reads
/// is offered to `reload` too, which skips it when it is what the gateway started with: an edit made between the
/// start and the watcher's first look is not missed.
pub async fn watch_file(state: web::Data<AppState>, path: PathBuf) {
    let read = |p: &PathBuf| std::fs::read(p).ok();
    let mut applied: Option<Vec<u8>> = None;
    let mut pending: Option<Vec<u8>> = None;
    loop {
        actix_web::rt::time::sleep(POLL_INTERVAL).await;
        let now = read(&path);
        if now == applied {
            pending = None;
            continue;
        }
        match (&pending, &now) {
            (Some(p), Some(n)) if p == n => {
                reload(&state, Trigger::FileChange);
                applied = now;
                pending = None;
            }
            _ => pending = now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings as a file would hold them (no validation: `restart_only` compares, it does not judge).
    fn settings(text: &str) -> Settings {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn each_key_read_at_start_is_named_when_a_reload_changes_it() {
        let base = settings("");
        for (text, key) in [
            ("[server]\nlisten = \"0.0.0.0:9000\"", "server.listen"),
            (
                "[server]\nmetrics_listen = \"127.0.0.1:9090\"",
                "server.metrics_listen",
            ),
            ("[server]\nworkers = 2", "server.workers"),
            ("[upstream]\nmode = \"vidu\"", "upstream.mode"),
            (
                "[upstream]\nconnect_timeout_ms = 1",
                "upstream.connect_timeout_ms",
            ),
            (
                "[upstream]\nrequest_timeout_ms = 1",
                "upstream.request_timeout_ms",
            ),
            (
                "[upstream]\npool_idle_timeout_ms = 1",
                "upstream.pool_idle_timeout_ms",
            ),
            ("[state]\nbackend = \"redis\"", "state.backend"),
            (
                "[state]\nledger_path = \"other.sqlite3\"",
                "state.ledger_path",
            ),
            (
                "[state]\nredis_url = \"redis://other:6379/0\"",
                "state.redis_url",
            ),
            (
                "[telemetry]\nlog_format = \"pretty\"",
                "telemetry.log_format",
            ),
        ] {
            assert_eq!(restart_only(&base, &settings(text)), [key], "{text}");
        }
        let both = settings("[server]\nworkers = 2\n[state]\nledger_path = \"other.sqlite3\"");
        assert_eq!(
            restart_only(&base, &both),
            ["server.workers", "state.ledger_path"]
        );
    }

    #[test]
    fn limits_rules_and_secrets_other_than_the_redis_url_apply_without_a_restart() {
        let base = settings("");
        let changed = settings(
            r#"
[server]
max_body_bytes = 1000
body_read_timeout_ms = 5

[upstream]
base_url = "https://api.vidu.com"
api_key = "rotated"

[auth]
hs256_secret = "rotated-secret"
leeway_secs = 0

[policy]
timezone = "UTC"

[policy.defaults]
daily_credits = 100

[telemetry]
log_level = "debug"
"#,
        );
        assert!(restart_only(&base, &changed).is_empty());
        assert!(restart_only(&changed, &base).is_empty());
    }

    #[test]
    fn what_asked_for_a_reload_is_named_for_the_log() {
        assert_eq!(Trigger::Signal.to_string(), "SIGHUP");
        assert_eq!(Trigger::FileChange.to_string(), "config file changed");
    }
}
