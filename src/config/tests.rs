//! Layering (file, env, `*_file`), code defaults, and the checks of `validate()`.

use std::collections::HashMap;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn file(text: &str) -> Result<LoadedConfig, ConfigError> {
    load_from_str(text, Origin::Builtin, HashMap::new())
}

const MINIMAL: &str =
    "[auth]\nalgorithms = [\"HS256\"]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n";

fn problems(result: Result<LoadedConfig, ConfigError>) -> String {
    match result {
        Err(e) => e.to_string(),
        Ok(_) => panic!("expected an invalid configuration"),
    }
}

#[test]
fn the_built_in_file_loads_and_runs_the_sandbox() {
    let c = load_with_env(None, HashMap::new()).unwrap();
    assert_eq!(c.origin, Origin::Builtin);
    assert_eq!(c.settings.upstream.mode, UpstreamMode::Sandbox);
    assert!(c.uses_dev_secret());
    assert_eq!(c.settings.models.len(), 4);
}

#[test]
fn keys_missing_from_a_file_take_their_code_defaults() {
    let c = file(MINIMAL).unwrap();
    let s = &c.settings;
    assert_eq!(s.server.listen, "127.0.0.1:8080");
    assert_eq!(s.server.max_body_bytes, 20 * 1024 * 1024);
    assert_eq!(s.upstream.request_timeout_ms, 30_000);
    assert_eq!(s.auth.leeway_secs, 60);
    assert_eq!(s.policy.timezone, "Asia/Shanghai");
    assert_eq!(s.policy.defaults.off_peak, Some(OffPeakMode::Allow));
    assert_eq!(
        s.policy.defaults.daily_credits, None,
        "no budget unless configured"
    );
    assert_eq!(s.models, crate::vidu::catalog::seed_catalog());
    assert!(!c.uses_dev_secret());
}

#[test]
fn a_file_without_a_secret_gets_no_secret_from_the_built_in_file() {
    let msg = problems(file("[server]\nlisten = \"127.0.0.1:1\"\n"));
    assert!(msg.contains("no key source is configured"), "{msg}");
}

#[test]
fn environment_overrides_the_file() {
    let c = load_from_str(
        MINIMAL,
        Origin::Builtin,
        env(&[
            ("VIDU_GW__UPSTREAM__API_KEY", "env-key"),
            ("VIDU_GW__UPSTREAM__MODE", "vidu"),
            ("VIDU_GW__SERVER__MAX_BODY_BYTES", "1234"),
            ("VIDU_GW__AUTH__REQUIRE_TEAM", "false"),
            ("VIDU_GW__AUTH__ALGORITHMS", "HS256,RS256"),
            ("VIDU_GW__POLICY__DEFAULTS__DAILY_CREDITS", "500"),
            ("OTHER_PREFIX__SERVER__LISTEN", "nonsense"),
        ]),
    )
    .unwrap();
    let s = &c.settings;
    assert_eq!(s.upstream.api_key.expose(), "env-key");
    assert_eq!(s.upstream.mode, UpstreamMode::Vidu);
    assert_eq!(s.server.max_body_bytes, 1234);
    assert!(!s.auth.require_team);
    assert_eq!(s.auth.algorithms, ["HS256", "RS256"]);
    assert_eq!(s.policy.defaults.daily_credits, Some(500));
    assert_eq!(s.server.listen, "127.0.0.1:8080");
}

#[test]
fn an_unknown_environment_key_is_an_error_too() {
    let msg = problems(load_from_str(
        MINIMAL,
        Origin::Builtin,
        env(&[("VIDU_GW__SERVER__LISTN", "x")]),
    ));
    assert!(msg.contains("listn"), "{msg}");
}

#[test]
fn secrets_are_read_from_files_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "\n  from-file-key \n").unwrap();
    let text = format!(
        "{MINIMAL}[upstream]\nmode = \"vidu\"\napi_key_file = \"{}\"\n",
        key.display()
    );
    let c = file(&text).unwrap();
    assert_eq!(c.settings.upstream.api_key.expose(), "from-file-key");
    assert!(!c.redacted_toml().contains("from-file-key"));
}

#[test]
fn a_secret_file_may_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("hs");
    std::fs::write(&key, "file-secret-0123456789abcdef0123456789").unwrap();
    let c = load_from_str(
        "[auth]\nalgorithms = [\"HS256\"]\n",
        Origin::Builtin,
        env(&[("VIDU_GW__AUTH__HS256_SECRET_FILE", key.to_str().unwrap())]),
    )
    .unwrap();
    assert_eq!(
        c.settings.auth.hs256_secret.expose(),
        "file-secret-0123456789abcdef0123456789"
    );
}

#[test]
fn a_secret_and_its_file_together_or_a_missing_file_are_errors() {
    let text = format!("{MINIMAL}hs256_secret_file = \"/nonexistent/secret\"\n");
    let msg = problems(file(&text));
    assert!(
        msg.contains("auth.hs256_secret and auth.hs256_secret_file are both set"),
        "{msg}"
    );
    let msg = problems(file(
        "[auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"/nonexistent/secret\"\n",
    ));
    assert!(
        msg.contains("auth.hs256_secret_file: cannot read /nonexistent/secret"),
        "{msg}"
    );
}

#[test]
fn an_empty_secret_means_unset() {
    let msg = problems(file(&format!(
        "{MINIMAL}[upstream]\nmode = \"vidu\"\napi_key = \"\"\n"
    )));
    assert!(
        msg.contains("upstream.api_key is required when upstream.mode = \"vidu\""),
        "{msg}"
    );
}

#[test]
fn unknown_keys_are_errors_that_name_the_key() {
    for (text, key) in [
        ("[server]\nlisen = \"x\"\n", "lisen"),
        ("[upstreem]\n", "upstreem"),
        (
            "[policy.defaults]\nrequests_per_hour = 1\n",
            "requests_per_hour",
        ),
        ("[policy.teams.a]\nteam_budget = 1\n", "team_budget"),
        ("[policy.global]\nmodels = []\n", "models"),
        ("[models.m]\ncolour = 1\n", "colour"),
    ] {
        let msg = problems(file(&format!("{MINIMAL}{text}")));
        assert!(msg.contains(key), "{key}: {msg}");
    }
}

#[test]
fn validate_reports_every_problem_at_once_with_its_key() {
    let text = format!(
        "{MINIMAL}
[server]
listen = \"nowhere\"
[upstream]
base_url = \"ftp://api.vidu.cn\"
request_timeout_ms = 0
[policy]
timezone = \"Mars/Olympus\"
[policy.defaults]
models = [\"viduq9\"]
immediate_hours = [\"9-17\"]
max_resolution = \"huge\"
[telemetry]
log_level = \"vidu_gateway=verbose\"
"
    );
    let msg = problems(file(&text));
    for needle in [
        "server.listen",
        "upstream.base_url",
        "upstream.request_timeout_ms",
        "policy.timezone",
        "policy.defaults.models: \"viduq9\" is not in the model catalog",
        "policy.defaults.immediate_hours",
        "policy.defaults.max_resolution",
        "telemetry.log_level",
    ] {
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
}

#[test]
fn an_inconsistent_catalog_is_refused_with_the_key_named() {
    let text = format!(
        "{MINIMAL}
[models.m1]
durations = {{ min = 1, max = 10, default = 12 }}
resolutions = [\"720p\"]
default_resolution = \"1080p\"
credits = {{ base = {{ \"720p\" = 0 }}, per_second = {{ \"1080p\" = 1 }} }}
[models.m2]
durations = {{ min = 1, max = 4, default = 2 }}
resolutions = []
default_resolution = \"720p\"
credits = {{ base = {{}}, per_second = {{}} }}
"
    );
    let msg = problems(file(&text));
    for needle in [
        "models.m1.durations.default = 12 is outside 1..=10",
        "models.m1.default_resolution = \"1080p\" is not in models.m1.resolutions",
        "models.m1.credits.per_second has no price for \"720p\"",
        "models.m2.resolutions is empty",
    ] {
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
}

#[test]
fn a_file_with_models_replaces_the_whole_catalog() {
    let text = format!(
        "{MINIMAL}
[models.viduq3-pro-fast]
durations = {{ min = 1, max = 8, default = 4 }}
resolutions = [\"720p\"]
default_resolution = \"720p\"
credits = {{ base = {{ \"720p\" = 0 }}, per_second = {{ \"720p\" = 3.5 }} }}
"
    );
    let c = file(&text).unwrap();
    assert_eq!(
        c.settings.models.keys().collect::<Vec<_>>(),
        ["viduq3-pro-fast"]
    );
    assert_eq!(c.settings.models["viduq3-pro-fast"].prompt_max_chars, 2000);
}

#[test]
fn the_development_secret_is_refused_against_the_real_vidu() {
    let msg = problems(load_from_str(
        BUILTIN_CONFIG,
        Origin::Builtin,
        env(&[
            ("VIDU_GW__UPSTREAM__MODE", "vidu"),
            ("VIDU_GW__UPSTREAM__API_KEY", "k"),
        ]),
    ));
    assert!(msg.contains("development secret"), "{msg}");
}

#[test]
fn a_short_hs_secret_or_one_without_an_hs_algorithm_is_refused() {
    let msg = problems(file(
        "[auth]\nalgorithms = [\"HS256\"]\nhs256_secret = \"short\"\n",
    ));
    assert!(msg.contains("at least 32 bytes"), "{msg}");
    let msg = problems(file(
        "[auth]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n",
    ));
    assert!(msg.contains("allows no HS algorithm"), "{msg}");
}

#[test]
fn the_version_changes_with_the_effective_config() {
    let a = file(MINIMAL).unwrap();
    let b = file(&format!("{MINIMAL}[server]\nmax_body_bytes = 10\n")).unwrap();
    assert_eq!(a.version, file(MINIMAL).unwrap().version);
    assert_ne!(a.version, b.version);
}

#[test]
fn the_built_in_catalog_is_the_seed_catalog() {
    let c = load_with_env(None, HashMap::new()).unwrap();
    assert_eq!(c.settings.models, crate::vidu::catalog::seed_catalog());
}
