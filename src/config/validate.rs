//! `validate()`: refuses a configuration that cannot work, naming the key and what to change.

use std::net::SocketAddr;

use super::settings::*;
use crate::catalog::{resolution_rank, valid_model_name};

/// JWT algorithms the gateway can verify.
pub const KNOWN_ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

/// RFC 7518 §3.2: an HMAC key at least as long as the hash output.
const MIN_HS_SECRET_BYTES: usize = 32;

pub fn validate(s: &Settings, problems: &mut Vec<String>) {
    if s.upstream.mode == UpstreamMode::Vidu
        && s.auth.hs256_secret.expose() == super::DEV_HS256_SECRET
    {
        problems.push(
            "auth.hs256_secret is the built-in development secret, which anyone can use to mint tokens: it is \
             refused when upstream.mode = \"vidu\" — configure your identity provider's keys (auth.jwks_url, \
             auth.public_key_files) or your own secret"
                .into(),
        );
    }
    if s.upstream.mode == UpstreamMode::Vidu
        && s.callbacks.relay_secret.expose() == super::DEV_RELAY_SECRET
    {
        problems.push(
            "callbacks.relay_secret is the built-in development secret, which anyone can read: it is refused when \
             upstream.mode = \"vidu\" — set a secret of your own (callbacks.relay_secret_file) and give it to the \
             teams that verify relays"
                .into(),
        );
    }
    server(&s.server, problems);
    upstream(&s.upstream, problems);
    auth(&s.auth, problems);
    catalog(s, problems);
    policy(s, problems);
    state(&s.state, problems);
    callbacks(&s.callbacks, problems);
    tasks(&s.tasks, problems);
    if s.balance.poll_secs > 0 && s.balance.poll_secs < 10 {
        problems.push(format!(
            "balance.poll_secs = {} is too often: Vidu's balance changes with tasks, read it at most every 10 s \
             (or 0 to stop reading it)",
            s.balance.poll_secs
        ));
    }
    idempotency(&s.idempotency, problems);
    telemetry(&s.telemetry, problems);
}

/// The longest `idempotency.ttl_secs`: 30 days (every answer kept is memory on the memory backend, and Redis's).
pub const MAX_IDEMPOTENCY_TTL_SECS: u64 = 30 * 86_400;

fn idempotency(i: &IdempotencySettings, p: &mut Vec<String>) {
    if i.ttl_secs == 0 || i.ttl_secs > MAX_IDEMPOTENCY_TTL_SECS {
        p.push(format!(
            "idempotency.ttl_secs = {} must be between 1 and {MAX_IDEMPOTENCY_TTL_SECS} (30 days): it is how long a \
             create's answer is kept for retries with the same Idempotency-Key (86400 = one day)",
            i.ttl_secs
        ));
    }
}

fn callbacks(c: &CallbacksSettings, p: &mut Vec<String>) {
    if !c.public_base_url.is_empty() {
        match url::Url::parse(&c.public_base_url) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none()
                    && u.username().is_empty()
                    && u.password().is_none() => {}
            _ => p.push(format!(
                "callbacks.public_base_url = {:?} must be the gateway's address as Vidu reaches it: http(s)://host[:port][/path], \
                 no query, no credentials (e.g. \"https://vidu-gw.example.com\"), or \"\" to learn task states by reconciliation",
                c.public_base_url
            )),
        }
    }
    if c.max_skew_secs == 0 {
        p.push("callbacks.max_skew_secs must be at least 1 (Vidu's clock and the gateway's are never equal)".into());
    }
    if c.relay_attempts == 0 {
        p.push("callbacks.relay_attempts must be at least 1".into());
    }
    if c.relay_timeout_ms == 0 {
        p.push("callbacks.relay_timeout_ms must be at least 1".into());
    }
    if c.relay_backoff_ms == 0 {
        p.push("callbacks.relay_backoff_ms must be at least 1".into());
    }
    if c.relay_backoff_max_ms < c.relay_backoff_ms {
        p.push(format!(
            "callbacks.relay_backoff_max_ms ({}) must be at least callbacks.relay_backoff_ms ({})",
            c.relay_backoff_max_ms, c.relay_backoff_ms
        ));
    }
}

fn tasks(t: &TasksSettings, p: &mut Vec<String>) {
    if t.reconcile_interval_secs > 0 && t.reconcile_max_per_minute == 0 {
        p.push(
            "tasks.reconcile_max_per_minute must be at least 1 while tasks.reconcile_interval_secs is not 0 \
             (set the interval to 0 to stop polling)"
                .into(),
        );
    }
    if t.unknown_release_after_hours > 24 * 365 {
        p.push(format!(
            "tasks.unknown_release_after_hours = {} is more than a year: Vidu expires every task long before",
            t.unknown_release_after_hours
        ));
    }
    if t.unknown_release_after_hours == 0 {
        p.push(
            "tasks.unknown_release_after_hours must be at least 1: an unknown reservation may still become a \
             task Vidu charges for"
                .into(),
        );
    }
    if t.running_slot_ttl_secs == 0 || t.running_slot_ttl_secs > 7 * 86_400 {
        p.push(format!(
            "tasks.running_slot_ttl_secs = {} is out of range: set 1..=604800 (seconds a running-task slot is \
             kept without news of its task; Vidu tasks end within hours)",
            t.running_slot_ttl_secs
        ));
    }
    if t.fair_share_idle_secs > 7 * 86_400 {
        p.push(format!(
            "tasks.fair_share_idle_secs = {} is more than a week: set 0..=604800",
            t.fair_share_idle_secs
        ));
    }
}

fn server(s: &ServerSettings, p: &mut Vec<String>) {
    if s.listen.parse::<SocketAddr>().is_err() {
        p.push(format!(
            "server.listen = {:?} is not an address:port (e.g. \"127.0.0.1:8080\")",
            s.listen
        ));
    }
    if let Some(m) = &s.metrics_listen
        && m.parse::<SocketAddr>().is_err()
    {
        p.push(format!(
            "server.metrics_listen = {m:?} is not an address:port (e.g. \"127.0.0.1:9090\")"
        ));
    }
    if s.max_body_bytes == 0 {
        p.push("server.max_body_bytes must be at least 1".into());
    }
    if s.body_read_timeout_ms == 0 {
        p.push(
            "server.body_read_timeout_ms must be at least 1 (a body that stalls must be cut off)"
                .into(),
        );
    }
    if s.max_buffered_body_bytes < s.max_body_bytes {
        p.push(format!(
            "server.max_buffered_body_bytes = {} is below server.max_body_bytes = {}: a body of the largest \
             accepted size could never be read; raise it to at least {}",
            s.max_buffered_body_bytes, s.max_body_bytes, s.max_body_bytes
        ));
    }
}

/// Longest `upstream.pool_idle_timeout_ms`: a typical upstream idle timeout.
const MAX_POOL_IDLE_TIMEOUT_MS: u64 = 60_000;

fn upstream(u: &UpstreamSettings, p: &mut Vec<String>) {
    if u.mode == UpstreamMode::Vidu
        && u.base_url.is_plain_http()
        && !is_loopback_host(u.base_url.host())
    {
        p.push(format!(
            "upstream.base_url = {:?}: the enterprise key would travel in clear text; use https:// (plain \
             http:// is accepted only for a loopback host: 127.0.0.0/8, ::1, localhost)",
            u.base_url.as_str()
        ));
    }
    if u.api_key.is_set()
        && let Some(why) = unfit_for_header(u.api_key.expose())
    {
        let key = match &u.api_key_file {
            Some(file) => format!("upstream.api_key_file: {}", file.display()),
            None => "upstream.api_key".to_owned(),
        };
        p.push(format!(
            "{key} {why}: the key is sent as the header `Authorization: Token <key>`, so it must be the key \
             alone, on one line"
        ));
    }
    if u.mode == UpstreamMode::Vidu && !u.api_key.is_set() {
        p.push(
            "upstream.api_key is required when upstream.mode = \"vidu\" (set upstream.api_key_file, \
             or the VIDU_GW__UPSTREAM__API_KEY environment variable)"
                .into(),
        );
    }
    if u.connect_timeout_ms == 0 {
        p.push("upstream.connect_timeout_ms must be at least 1".into());
    }
    if u.request_timeout_ms == 0 {
        p.push("upstream.request_timeout_ms must be at least 1".into());
    }
    if u.pool_idle_timeout_ms > MAX_POOL_IDLE_TIMEOUT_MS {
        p.push(format!(
            "upstream.pool_idle_timeout_ms = {} is above {MAX_POOL_IDLE_TIMEOUT_MS}: an idle connection kept that \
             long is likely to have been closed by Vidu's side (typical idle timeouts are 60 s); keep it below \
             Vidu's idle timeout, e.g. 15000 (the default)",
            u.pool_idle_timeout_ms
        ));
    }
}

/// 127.0.0.0/8, ::1 (also as `::ffff:127.x.y.z`) and `localhost`: plain http stays on the machine.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// Why a secret cannot be sent as (part of) an HTTP header value, if it cannot. The value is never quoted.
fn unfit_for_header(value: &str) -> Option<&'static str> {
    if value.contains(['\n', '\r']) {
        Some("holds several lines (a PEM file, or several keys?)")
    } else if value.chars().any(char::is_control) {
        Some("holds control characters, which an HTTP header cannot carry")
    } else if !value.is_ascii() {
        Some("holds non-ASCII characters, which an HTTP header cannot carry reliably")
    } else if value.contains(' ') {
        Some("holds a space (give the key alone, without the \"Token \" scheme)")
    } else {
        None
    }
}

fn auth(a: &AuthSettings, p: &mut Vec<String>) {
    if a.algorithms.is_empty() {
        p.push(
            "auth.algorithms is empty: list the algorithms your identity provider signs with"
                .into(),
        );
    }
    for alg in &a.algorithms {
        if alg.eq_ignore_ascii_case("none") {
            p.push("auth.algorithms: \"none\" is never accepted (unsigned tokens)".into());
        } else if !KNOWN_ALGORITHMS.contains(&alg.as_str()) {
            p.push(format!(
                "auth.algorithms: unknown algorithm {alg:?} (known: {})",
                KNOWN_ALGORITHMS.join(", ")
            ));
        }
    }
    let hs_allowed = a.algorithms.iter().any(|x| x.starts_with("HS"));
    let asym_allowed = a.algorithms.iter().any(|x| !x.starts_with("HS"));
    if a.hs256_secret.is_set() {
        if !hs_allowed {
            p.push(
                "auth.hs256_secret is set but auth.algorithms allows no HS algorithm: add \"HS256\" \
                 to auth.algorithms or remove the secret"
                    .into(),
            );
        }
        if a.hs256_secret.expose().len() < MIN_HS_SECRET_BYTES {
            p.push(format!(
                "auth.hs256_secret must be at least {MIN_HS_SECRET_BYTES} bytes (RFC 7518 §3.2)"
            ));
        }
    }
    let has_public =
        !a.public_key_files.is_empty() || a.jwks_file.is_some() || a.jwks_url.is_some();
    if !a.hs256_secret.is_set() && !has_public {
        p.push(
            "auth: no key source is configured: set auth.hs256_secret(_file), auth.public_key_files, \
             auth.jwks_file or auth.jwks_url"
                .into(),
        );
    }
    if has_public && !asym_allowed {
        p.push(
            "auth: public keys are configured but auth.algorithms allows only HS algorithms: add e.g. \
             \"RS256\" or \"ES256\""
                .into(),
        );
    }
    if let Some(url) = &a.jwks_url
        && !matches!(
            url.parse::<awc::http::Uri>()
                .ok()
                .as_ref()
                .and_then(|u| u.scheme_str()),
            Some("http" | "https")
        )
    {
        p.push(format!("auth.jwks_url = {url:?} is not an http(s) URL"));
    }
    if a.jwks_refresh_secs == 0 {
        p.push("auth.jwks_refresh_secs must be at least 1".into());
    }
    if a.max_token_lifetime_secs == Some(0) {
        p.push(
            "auth.max_token_lifetime_secs = 0 would refuse every token: set the longest lifetime your identity \
             provider issues (e.g. 3600), or remove the key for no cap"
                .into(),
        );
    }
    for (key, value) in [
        ("auth.user_claim", &a.user_claim),
        ("auth.team_claim", &a.team_claim),
        ("auth.roles_claim", &a.roles_claim),
        ("auth.admin_role", &a.admin_role),
    ] {
        if value.trim().is_empty() {
            p.push(format!("{key} must not be empty"));
        }
    }
}

fn catalog(s: &Settings, p: &mut Vec<String>) {
    for (name, m) in &s.models {
        let key = format!("models.{name}");
        if !valid_model_name(name) {
            p.push(format!(
                "{key}: a model name is 1-64 characters of letters, digits, '-', '_' and '.'"
            ));
        }
        let d = m.durations;
        if d.min == 0 || d.min > d.max {
            p.push(format!(
                "{key}.durations: min must be at least 1 and at most max (got min = {}, max = {})",
                d.min, d.max
            ));
        } else if !(d.min..=d.max).contains(&d.default) {
            p.push(format!(
                "{key}.durations.default = {} is outside {}..={}",
                d.default, d.min, d.max
            ));
        }
        if m.resolutions.is_empty() {
            p.push(format!(
                "{key}.resolutions is empty: list at least one, e.g. [\"720p\"]"
            ));
        }
        for (i, r) in m.resolutions.iter().enumerate() {
            if resolution_rank(r).is_none() {
                p.push(format!(
                    "{key}.resolutions: {r:?} is not a resolution such as \"720p\""
                ));
            }
            if m.resolutions[..i].contains(r) {
                p.push(format!("{key}.resolutions lists {r:?} twice"));
            }
        }
        if !m.resolutions.contains(&m.default_resolution) {
            p.push(format!(
                "{key}.default_resolution = {:?} is not in {key}.resolutions",
                m.default_resolution
            ));
        }
        if m.prompt_max_chars == 0 {
            p.push(format!("{key}.prompt_max_chars must be at least 1"));
        }
        for (table, prices) in [
            ("base", &m.credits.base),
            ("per_second", &m.credits.per_second),
        ] {
            for r in &m.resolutions {
                if !prices.contains_key(r) {
                    p.push(format!("{key}.credits.{table} has no price for {r:?}"));
                }
            }
            for r in prices.keys() {
                if !m.resolutions.contains(r) {
                    p.push(format!(
                        "{key}.credits.{table} prices {r:?}, which is not in {key}.resolutions"
                    ));
                }
            }
        }
    }
}

/// The time zone, the limits (at least 1) and the hour windows were parsed at load; what is left is what one key
/// cannot know alone: that a model is in the catalog, that a resolution is one the gateway knows.
fn policy(s: &Settings, p: &mut Vec<String>) {
    let pol = &s.policy;
    user_rules("policy.defaults", &pol.defaults, s, p);
    for (team, t) in &pol.teams {
        user_rules(&format!("policy.teams.{team}"), &t.as_user_policy(), s, p);
    }
    for (user, u) in &pol.users {
        user_rules(&format!("policy.users.{user:?}"), u, s, p);
    }
}

fn user_rules(key: &str, r: &UserPolicy, s: &Settings, p: &mut Vec<String>) {
    if let Some(models) = &r.models {
        for m in models {
            if !s.models.contains_key(m) {
                p.push(format!(
                    "{key}.models: {m:?} is not in the model catalog (known: {})",
                    s.models.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    if let Some(res) = &r.max_resolution
        && resolution_rank(res).is_none()
    {
        p.push(format!(
            "{key}.max_resolution = {res:?} is not a resolution such as \"1080p\""
        ));
    }
}

impl TeamPolicy {
    /// The per-user keys of a team's table, as a `UserPolicy`.
    pub fn as_user_policy(&self) -> UserPolicy {
        UserPolicy {
            requests_per_minute: self.requests_per_minute,
            burst: self.burst,
            max_in_flight: self.max_in_flight,
            daily_credits: self.daily_credits,
            monthly_credits: self.monthly_credits,
            models: self.models.clone(),
            max_duration: self.max_duration,
            max_resolution: self.max_resolution.clone(),
            allow_recommended_prompt: self.allow_recommended_prompt,
            off_peak: self.off_peak,
            immediate_daily_credits: self.immediate_daily_credits,
            immediate_hours: self.immediate_hours.clone(),
            max_running_tasks: self.max_running_tasks,
            task_share: self.task_share,
            enforce: self.enforce,
        }
    }
}

fn state(st: &StateSettings, p: &mut Vec<String>) {
    if st.key_prefix.trim().is_empty() {
        p.push("state.key_prefix must not be empty".into());
    }
    if st.key_prefix.contains(['{', '}']) {
        p.push(format!(
            "state.key_prefix = {:?} must not contain braces: the gateway puts it in a hash tag ({{prefix}}) itself",
            st.key_prefix
        ));
    }
    if st.redis_timeout_ms == 0 {
        p.push(
            "state.redis_timeout_ms must be at least 1 (50 suits a Redis in the same network)"
                .into(),
        );
    }
    if st.task_retention_days == 0 {
        p.push("state.task_retention_days must be at least 1".into());
    }
    if st.backend == StateBackend::Redis && !st.redis_url.is_set() {
        p.push("state.redis_url is required when state.backend = \"redis\"".into());
    }
    if st.redis_url.is_set() {
        redis_url(st, p);
    }
    if (st.on_unavailable == OnUnavailable::FailOpen || st.backend == StateBackend::Redis)
        && st.spool_path.as_os_str().is_empty()
    {
        p.push(
            "state.spool_path must not be empty on the redis backend or with state.on_unavailable = \"fail_open\": \
             it keeps what the backend could not take (admissions under fail_open, settlements) until it is \
             written back"
                .into(),
        );
    }
    if st.backend == StateBackend::Memory && st.ledger_path.as_os_str().is_empty() {
        p.push("state.ledger_path must not be empty when state.backend = \"memory\"".into());
    }
}

/// The URL parses, its scheme is one the gateway speaks, and the password comes from one place. Messages never
/// quote the URL: it may hold a password.
fn redis_url(st: &StateSettings, p: &mut Vec<String>) {
    let url = st.redis_url.expose();
    let Ok(parsed) = url::Url::parse(url) else {
        p.push(
            "state.redis_url is not a URL: use redis://[:password@]host:port/db or rediss://… for TLS (the value \
             is not shown: it may hold a password)"
                .into(),
        );
        return;
    };
    let tls = match parsed.scheme() {
        "redis" => false,
        "rediss" => true,
        other => {
            p.push(format!(
                "state.redis_url has the scheme {other:?}: use redis:// or rediss:// (TLS)"
            ));
            return;
        }
    };
    if parsed.password().is_some() && st.redis_password_file.is_some() {
        p.push(
            "state.redis_url holds a password and state.redis_password_file is set: keep one of them".into(),
        );
    }
    if st.redis_ca_file.is_some() && !tls {
        p.push(
            "state.redis_ca_file is set but state.redis_url is not rediss://: the CA file is only used for TLS"
                .into(),
        );
    }
    if let Some(ca) = &st.redis_ca_file {
        match std::fs::read(ca) {
            Err(e) => p.push(format!("state.redis_ca_file: cannot read {}: {e}", ca.display())),
            Ok(pem) if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => p.push(format!(
                "state.redis_ca_file: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                ca.display()
            )),
            Ok(_) => {}
        }
    }
}

fn telemetry(t: &TelemetrySettings, p: &mut Vec<String>) {
    if tracing_subscriber::EnvFilter::try_new(&t.log_level).is_err() {
        p.push(format!(
            "telemetry.log_level = {:?} is not a level or filter such as \"info\" or \"vidu_gateway=debug\"",
            t.log_level
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream_problems(u: &UpstreamSettings) -> Vec<String> {
        let mut p = Vec::new();
        upstream(u, &mut p);
        p
    }

    #[test]
    fn the_pool_idle_timeout_stays_below_a_typical_upstream_idle_timeout() {
        let mut u = UpstreamSettings::default();
        assert_eq!(u.pool_idle_timeout_ms, 15_000);
        for ok in [0, 15_000, 60_000] {
            u.pool_idle_timeout_ms = ok;
            assert!(upstream_problems(&u).is_empty(), "{ok}");
        }
        u.pool_idle_timeout_ms = 60_001;
        let p = upstream_problems(&u);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("upstream.pool_idle_timeout_ms = 60001 is above 60000"),
            "{p:?}"
        );
    }
}
