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
    assert_eq!(s.policy.timezone.as_str(), "Asia/Shanghai");
    assert_eq!(s.policy.defaults.off_peak, Some(OffPeakMode::Allow));
    assert_eq!(
        s.policy.defaults.daily_credits, None,
        "no budget unless configured"
    );
    assert_eq!(s.models, crate::catalog::seed_catalog().unwrap());
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
    assert_eq!(c.settings.models, crate::catalog::seed_catalog().unwrap());
}

// --- A syntax error never shows the source text (the line may hold a secret).

#[test]
fn a_syntax_error_names_the_line_and_the_problem_but_never_shows_the_text() {
    for text in [
        format!("{MINIMAL}[upstream]\napi_key = \"SECRET-0123456789\nmode = \"vidu\"\n"),
        format!("{MINIMAL}[upstream]\napi_key = SECRET-0123456789\n"),
        format!("{MINIMAL}[upstream]\napi_key = 'SECRET-0123456789\n"),
        format!("{MINIMAL}[upstream]\napi_key = \"SECRET-0123456789\" and-more\n"),
        "[auth]\nalgorithms = [\"HS256\"]\n\n\nhs256_secret = \"SECRET-0123456789\n".to_owned(),
    ] {
        let msg = problems(file(&text));
        assert!(msg.contains("TOML syntax error at line 5, column"), "{msg}");
        assert!(!msg.contains("SECRET"), "the line is echoed: {msg}");
    }
}

// --- The published version is not a function of the secrets.

#[test]
fn the_version_is_not_a_function_of_the_secrets() {
    let base = format!(
        "{MINIMAL}[upstream]\nmode = \"vidu\"\nbase_url = \"https://api.vidu.cn\"\napi_key = \"key-one\"\n"
    );
    let a = file(&base).unwrap();
    let other_secrets = base.replace("key-one", "key-two").replace(
        "0123456789abcdef0123456789abcdef",
        "fedcba9876543210fedcba9876543210",
    );
    let b = load_from_str(
        &other_secrets,
        Origin::Builtin,
        env(&[("VIDU_GW__STATE__REDIS_URL", "redis://:pw@10.0.0.1:6379/1")]),
    )
    .unwrap();
    assert_eq!(a.version, b.version, "only secrets differ");
    assert!(!a.same_settings(&b), "a reload still sees the change");
    assert_eq!(
        a.settings.changed_secrets(&b.settings),
        ["upstream.api_key", "auth.hs256_secret", "state.redis_url"]
    );
    // Replicas on one host differ in their listen addresses: those are not part of the version.
    let c = file(&format!(
        "{base}[server]\nlisten = \"127.0.0.1:9999\"\nmetrics_listen = \"127.0.0.1:9998\"\n"
    ))
    .unwrap();
    assert_eq!(a.version, c.version);
    let d = file(&format!("{base}[server]\nmax_body_bytes = 1000\n")).unwrap();
    assert_ne!(
        a.version, d.version,
        "a non-secret setting is part of the version"
    );
}

// --- A key sent as a header value must fit in one.

#[test]
fn an_api_key_that_cannot_be_a_header_value_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("key.pem");
    std::fs::write(
        &pem,
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let text = format!(
        "{MINIMAL}[upstream]\nmode = \"vidu\"\napi_key_file = \"{}\"\n",
        pem.display()
    );
    let msg = problems(file(&text));
    assert!(
        msg.contains(&format!(
            "upstream.api_key_file: {} holds several lines",
            pem.display()
        )),
        "{msg}"
    );
    assert!(!msg.contains("MIIEv"), "the content is not shown: {msg}");

    for (value, why) in [
        ("Token abc123", "holds a space"),
        ("abc\u{7}123", "holds control characters"),
        ("clé-123", "holds non-ASCII characters"),
    ] {
        let msg = problems(load_from_str(
            &format!("{MINIMAL}[upstream]\nmode = \"vidu\"\n"),
            Origin::Builtin,
            env(&[("VIDU_GW__UPSTREAM__API_KEY", value)]),
        ));
        assert!(msg.contains(&format!("upstream.api_key {why}")), "{msg}");
        assert!(!msg.contains(value), "{msg}");
    }
    let ok = file(&format!(
        "{MINIMAL}[upstream]\nmode = \"vidu\"\napi_key = \"vda_0123-abc.XYZ\"\n"
    ));
    assert!(ok.is_ok(), "{:?}", ok.err());
}

// --- Values of the wrong type are errors, all reported at once, in the config's words.

#[test]
fn values_of_the_wrong_type_are_refused_not_coerced() {
    let text = format!(
        "{MINIMAL}[policy.defaults]\ndaily_credits = 200.5\nmonthly_credits = \"200\"\nrequests_per_minute = true\nmax_duration = \"5\"\n"
    );
    let msg = problems(file(&text));
    for needle in [
        "policy.defaults.daily_credits = 200.5: must be a whole number",
        "policy.defaults.monthly_credits = \"200\": must be a number, not a string: write 200 without quotes",
        "policy.defaults.requests_per_minute must be a whole number, not true/false",
        "policy.defaults.max_duration = \"5\": must be a number, not a string: write 5 without quotes",
    ] {
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
    let msg = problems(file(&format!("{MINIMAL}[server]\nlisten = 8080\n")));
    assert!(
        msg.contains("server.listen must be a string (in quotes), not a whole number"),
        "{msg}"
    );
    let msg = problems(file(&format!("{MINIMAL}require_team = \"false\"\n")));
    assert!(
        msg.contains("auth.require_team = \"false\": must be true or false"),
        "{msg}"
    );
    let msg = problems(file(&format!(
        "{MINIMAL}[policy.defaults]\nmodels = \"viduq2\"\n"
    )));
    assert!(
        msg.contains("policy.defaults.models must be a list"),
        "{msg}"
    );
}

#[test]
fn enum_values_and_negative_numbers_are_explained_in_the_configs_words() {
    let msg = problems(file(&format!(
        "{MINIMAL}[policy.defaults]\noff_peak = \"fallbak\"\ndaily_credits = -5\n[upstream]\nmode = \"vido\"\n[policy.teams.t]\nteam_burst = 4294967296\n"
    )));
    for needle in [
        "policy.defaults.off_peak = \"fallbak\": use one of allow, force, forbid, fallback",
        "policy.defaults.daily_credits = -5: must be 0 or more",
        "upstream.mode = \"vido\": use one of sandbox, vidu",
        "policy.teams.t.team_burst = 4294967296: must be at most 4294967295",
    ] {
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
    for rust in ["64-bit", "variant", "expected u", "invalid type"] {
        assert!(!msg.contains(rust), "Rust's words ({rust}): {msg}");
    }
}

#[test]
fn structural_and_semantic_problems_are_reported_together() {
    let msg = problems(file(&format!(
        "{MINIMAL}[server]\nlisen = \"x\"\nlisten = \"nowhere\"\nmax_body_bytes = \"big\"\n[policy]\ntimezone = \"Mars/Olympus\"\n"
    )));
    for needle in [
        "server.lisen is not a known key (did you mean server.listen?)",
        "server.max_body_bytes must be a whole number, not a string",
        "server.listen = \"nowhere\" is not an address:port",
        "policy.timezone = \"Mars/Olympus\"",
    ] {
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
    assert_eq!(msg.matches("\n  - ").count(), 4, "{msg}");
}

#[test]
fn unknown_keys_far_from_any_known_one_list_what_the_table_accepts() {
    let msg = problems(file(&format!("{MINIMAL}[validation]\nmode = \"x\"\n")));
    assert!(
        msg.contains("validation.mode is not a known key; [validation] accepts unknown_fields"),
        "{msg}"
    );
    let msg = problems(file(&format!(
        "{MINIMAL}[policy.users.\"a@b.c\"]\ndayly_credits = 1\n"
    )));
    assert!(
        msg.contains("policy.users.\"a@b.c\".dayly_credits is not a known key (did you mean policy.users.\"a@b.c\".daily_credits?)"),
        "{msg}"
    );
}

#[test]
fn a_catalog_entry_names_its_missing_keys_and_its_bad_prices() {
    let msg = problems(file(&format!(
        "{MINIMAL}[models.m]\nresolutions = [\"720p\"]\ndefault_resolution = \"720p\"\ncredits = {{ base = {{ \"720p\" = -1 }}, per_second = {{ \"720p\" = \"x\" }} }}\n[pricing]\noff_peak_factor = true\n"
    )));
    for needle in [
        "models.m.durations is required in [models.m]",
        "models.m.credits.base.720p: `-1` is not a non-negative decimal number",
        "models.m.credits.per_second.720p: `x` is not a non-negative decimal number",
        "pricing.off_peak_factor cannot be true/false",
    ] {
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
}

#[test]
fn an_unknown_environment_variable_is_blamed_on_the_environment() {
    let msg = problems(load_from_str(
        MINIMAL,
        Origin::File("/etc/gw.toml".into()),
        env(&[
            ("VIDU_GW__SERVER__LISTN", "secret-looking-value"),
            ("VIDU_GW__UPSTREAM", "x"),
        ]),
    ));
    assert!(
        msg.starts_with("/etc/gw.toml with its VIDU_GW__* environment overrides is invalid"),
        "{msg}"
    );
    assert!(
        msg.contains("environment variable VIDU_GW__SERVER__LISTN: server.listn is not a known key (did you mean server.listen?)"),
        "{msg}"
    );
    assert!(
        msg.contains("environment variable VIDU_GW__UPSTREAM: upstream is a table, not a value"),
        "{msg}"
    );
    assert!(!msg.contains("secret-looking-value"), "{msg}");
}

#[test]
fn environment_values_are_parsed_to_the_type_the_key_takes() {
    let c = load_from_str(
        MINIMAL,
        Origin::Builtin,
        env(&[
            ("VIDU_GW__POLICY__DEFAULTS__DAILY_CREDITS", "200"),
            ("VIDU_GW__POLICY__TEAMS__MKT__TEAM_BURST", " 7 "),
            ("VIDU_GW__POLICY__DEFAULTS__OFF_PEAK", "force"),
            ("VIDU_GW__PRICING__OFF_PEAK_FACTOR", "0.3"),
            ("VIDU_GW__AUTH__REQUIRE_TEAM", "FALSE"),
            ("VIDU_GW__POLICY__DEFAULTS__MODELS", "viduq2, viduq1"),
        ]),
    )
    .unwrap();
    let s = &c.settings;
    assert_eq!(s.policy.defaults.daily_credits, Some(200));
    assert_eq!(
        s.policy.teams["mkt"]
            .team_burst
            .map(std::num::NonZeroU32::get),
        Some(7)
    );
    assert_eq!(s.policy.defaults.off_peak, Some(OffPeakMode::Force));
    assert_eq!(s.pricing.off_peak_factor.to_string(), "0.3");
    assert!(!s.auth.require_team);
    assert_eq!(
        s.policy.defaults.models.as_deref(),
        Some(&["viduq2".to_owned(), "viduq1".to_owned()][..])
    );

    let msg = problems(load_from_str(
        MINIMAL,
        Origin::Builtin,
        env(&[
            ("VIDU_GW__POLICY__DEFAULTS__DAILY_CREDITS", "lots"),
            ("VIDU_GW__POLICY__DEFAULTS__MONTHLY_CREDITS", "-5"),
            ("VIDU_GW__AUTH__REQUIRE_TEAM", "yes"),
        ]),
    ));
    for needle in [
        "environment variable VIDU_GW__POLICY__DEFAULTS__DAILY_CREDITS: policy.defaults.daily_credits must be a whole number",
        "environment variable VIDU_GW__POLICY__DEFAULTS__MONTHLY_CREDITS: policy.defaults.monthly_credits = -5: must be 0 or more",
        "environment variable VIDU_GW__AUTH__REQUIRE_TEAM: auth.require_team must be true or false",
    ] {
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
    assert!(!msg.contains("lots"), "{msg}");
}

// --- The enterprise key never travels in clear text.

#[test]
fn plain_http_to_the_real_vidu_is_refused_unless_the_host_is_loopback() {
    let with = |mode: &str, url: &str| {
        file(&format!(
            "{MINIMAL}[upstream]\nmode = \"{mode}\"\nbase_url = \"{url}\"\napi_key = \"k\"\n"
        ))
    };
    let msg = problems(with("vidu", "http://api.vidu.cn"));
    assert!(
        msg.contains("upstream.base_url = \"http://api.vidu.cn\": the enterprise key would travel in clear text; use https://"),
        "{msg}"
    );
    assert!(with("vidu", "http://10.1.2.3:8080").is_err());
    assert!(with("vidu", "http://localhost.evil.example").is_err());
    for ok in [
        "https://api.vidu.cn",
        "http://127.0.0.1:9000",
        "http://127.8.9.10",
        "http://localhost:8080",
        "http://LOCALHOST",
        "http://[::1]:8080",
    ] {
        assert!(
            with("vidu", ok).is_ok(),
            "{ok}: {:?}",
            with("vidu", ok).err()
        );
    }
    assert!(
        with("sandbox", "http://api.vidu.cn").is_ok(),
        "no key is sent in sandbox mode"
    );
}

// --- Parse, don't validate: values that can be wrong are parsed at load, into types that cannot be; what cannot
// parse is refused there, naming the key, in the config's words.

/// The minimal file with `extra` appended, loaded.
fn loads(extra: &str) -> LoadedConfig {
    file(&format!("{MINIMAL}{extra}")).unwrap()
}

/// Sets `var` to `value` over the minimal file and expects `problem`, blamed on the variable.
fn assert_problem_from_env(var: &str, value: &str, problem: &str) {
    let msg = problems(load_from_str(
        MINIMAL,
        Origin::Builtin,
        env(&[(var, value)]),
    ));
    let expected = format!("environment variable {var}: {problem}");
    assert!(msg.contains(&expected), "{expected}: {msg}");
}

/// The problems of an invalid configuration, one per line.
fn problem_lines(result: Result<LoadedConfig, ConfigError>) -> Vec<String> {
    match result {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(other) => panic!("not a list of problems: {other}"),
        Ok(_) => panic!("expected an invalid configuration"),
    }
}

#[test]
fn running_task_keys_are_checked_at_load_naming_the_key() {
    let lines = problem_lines(file(&format!(
        "{MINIMAL}[policy.defaults]\nmax_running_tasks = 0\n[policy.teams.mkt]\nteam_max_running_tasks = 0\n\
         [policy.users.\"a@b.c\"]\ntask_share = 3\n[policy.global]\nmax_running_tasks = 0\n\
         [tasks]\nrunning_slot_ttl_secs = 0\nfair_share_idle_secs = 999999999\n"
    )));
    let mut lines = lines;
    lines.sort();
    let mut expected = vec![
        "policy.defaults.max_running_tasks must be at least 1 (leave it out for no limit)".to_owned(),
        "policy.teams.mkt.team_max_running_tasks must be at least 1 (leave it out for no limit)".into(),
        "policy.global.max_running_tasks must be at least 1 (leave it out for no limit)".into(),
        "tasks.running_slot_ttl_secs = 0 is out of range: set 1..=604800 (seconds a running-task slot is kept \
         without news of its task; Vidu tasks end within hours)"
            .into(),
        "tasks.fair_share_idle_secs = 999999999 is more than a week: set 0..=604800".into(),
    ];
    expected.sort();
    assert_eq!(lines, expected);
    // Weights of 0 are allowed: a team (or the pool) that only borrows. A user table takes any defaults key,
    // task_share too (it has no effect there: a user is not a share group).
    let ok = file(&format!(
        "{MINIMAL}[policy.defaults]\ntask_share = 0\nmax_running_tasks = 2\n[policy.teams.mkt]\ntask_share = 0\n\
         team_max_running_tasks = 3\n[policy.global]\nmax_running_tasks = 5\n"
    ));
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[test]
fn a_limit_of_zero_is_refused_at_load_naming_the_key() {
    let lines = problem_lines(file(&format!(
        "{MINIMAL}[policy.defaults]\nrequests_per_minute = 0\nburst = 0\nmax_in_flight = 0\n\
         [policy.teams.mkt]\nburst = 0\nteam_requests_per_minute = 0\nteam_burst = 0\nteam_max_in_flight = 0\n\
         [policy.users.\"a@b.c\"]\nrequests_per_minute = 0\n\
         [policy.global]\nrequests_per_minute = 0\nburst = 0\nmax_in_flight = 0\n"
    )));
    let mut expected: Vec<String> = [
        "policy.defaults.requests_per_minute",
        "policy.defaults.burst",
        "policy.defaults.max_in_flight",
        "policy.teams.mkt.burst",
        "policy.teams.mkt.team_requests_per_minute",
        "policy.teams.mkt.team_burst",
        "policy.teams.mkt.team_max_in_flight",
        "policy.users.\"a@b.c\".requests_per_minute",
        "policy.global.requests_per_minute",
        "policy.global.burst",
        "policy.global.max_in_flight",
    ]
    .iter()
    .map(|key| format!("{key} must be at least 1 (leave it out for no limit)"))
    .collect();
    let mut lines = lines;
    lines.sort();
    expected.sort();
    assert_eq!(lines, expected, "each once, and nothing else");

    assert_problem_from_env(
        "VIDU_GW__POLICY__DEFAULTS__BURST",
        "0",
        "policy.defaults.burst must be at least 1 (leave it out for no limit)",
    );
}

#[test]
fn limits_load_as_non_zero_numbers_and_print_as_written() {
    let c = file(&format!(
        "{MINIMAL}[policy.defaults]\nrequests_per_minute = 20\nburst = 5\nmax_in_flight = 2\n\
         [policy.teams.mkt]\nteam_max_in_flight = 10\n[policy.global]\nrequests_per_minute = 600\n"
    ))
    .unwrap();
    let p = &c.settings.policy;
    assert_eq!(p.defaults.requests_per_minute.map(|n| n.get()), Some(20));
    assert_eq!(p.teams["mkt"].team_max_in_flight.map(|n| n.get()), Some(10));
    assert_eq!(p.global.requests_per_minute.map(|n| n.get()), Some(600));
    let toml = c.redacted_toml();
    for line in [
        "requests_per_minute = 20",
        "burst = 5",
        "max_in_flight = 2",
        "team_max_in_flight = 10",
        "requests_per_minute = 600",
    ] {
        assert!(toml.contains(line), "{line}: {toml}");
    }
}

#[test]
fn a_time_zone_is_found_at_load_and_a_bad_one_is_refused_naming_the_key() {
    let c = loads("[policy]\ntimezone = \"Europe/Berlin\"\n");
    assert_eq!(
        c.settings.policy.timezone.tz(),
        &jiff::tz::TimeZone::get("Europe/Berlin").unwrap()
    );
    assert!(c.redacted_toml().contains("timezone = \"Europe/Berlin\""));

    let lines = problem_lines(file(&format!(
        "{MINIMAL}[policy]\ntimezone = \"Mars/Olympus\"\n"
    )));
    assert_eq!(
        lines,
        ["policy.timezone = \"Mars/Olympus\" is not an IANA time zone such as \"Asia/Shanghai\""]
    );
    assert_problem_from_env(
        "VIDU_GW__POLICY__TIMEZONE",
        "Nowhere/Land",
        "policy.timezone = \"Nowhere/Land\" is not an IANA time zone",
    );
}

#[test]
fn hour_windows_are_parsed_at_load_and_a_bad_one_is_refused_naming_the_key() {
    let c = loads("[policy.defaults]\nimmediate_hours = [\"09:00 - 19:00\", \"22:00-02:00\"]\n");
    let hours = c
        .settings
        .policy
        .defaults
        .immediate_hours
        .as_deref()
        .unwrap();
    assert!(hours[0].contains(9 * 60) && hours[1].contains(60) && !hours[1].contains(12 * 60));
    let written: toml::Table = toml::from_str(&c.redacted_toml()).unwrap();
    assert_eq!(
        written["policy"]["defaults"]["immediate_hours"],
        toml::Value::from(vec!["09:00 - 19:00", "22:00-02:00"]),
        "written back as configured"
    );

    let mut lines = problem_lines(file(&format!(
        "{MINIMAL}[policy.defaults]\nimmediate_hours = [\"09:00-19:00\", \"9-17\"]\n\
         [policy.teams.t]\nimmediate_hours = [\"09:00-09:00\"]\n\
         [policy.users.\"a@b.c\"]\nimmediate_hours = [\"25:00-26:00\"]\n"
    )));
    lines.sort();
    assert_eq!(
        lines,
        [
            "policy.defaults.immediate_hours: \"9-17\" is not a window such as \"09:00-19:00\"",
            "policy.teams.t.immediate_hours: \"09:00-09:00\" is empty: start and end must differ",
            "policy.users.\"a@b.c\".immediate_hours: \"25:00-26:00\" is not a window such as \"09:00-19:00\"",
        ]
    );
    assert_problem_from_env(
        "VIDU_GW__POLICY__DEFAULTS__IMMEDIATE_HOURS",
        "09:00-19:00, 7-8",
        "policy.defaults.immediate_hours: \"7-8\" is not a window",
    );
}

#[test]
fn the_upstream_url_is_parsed_at_load_and_a_bad_one_is_refused_naming_the_key() {
    let c = loads("[upstream]\nbase_url = \"http://127.0.0.1:9000/\"\n");
    assert_eq!(
        c.settings.upstream.base_url.as_str(),
        "http://127.0.0.1:9000/"
    );
    assert!(
        c.redacted_toml()
            .contains("base_url = \"http://127.0.0.1:9000/\""),
        "{}",
        c.redacted_toml()
    );
    for bad in [
        "ftp://api.vidu.cn",
        "not a url",
        "",
        "https://api.vidu.cn/?k=1",
    ] {
        let lines = problem_lines(file(&format!(
            "{MINIMAL}[upstream]\nbase_url = \"{bad}\"\n"
        )));
        assert_eq!(
            lines,
            [format!(
                "upstream.base_url = {bad:?} is not an http(s) URL such as \"https://api.vidu.cn\""
            )]
        );
    }
}

#[test]
fn callback_and_task_keys_are_checked_at_load_naming_the_key() {
    let msg = problems(file(
        r#"
[callbacks]
public_base_url = "ftp://gw.example.com/?x=1"
relay_hosts = ["hooks.example.com", "http://bad"]
max_skew_secs = 0
relay_attempts = 0
relay_backoff_ms = 1000
relay_backoff_max_ms = 10
[tasks]
reconcile_max_per_minute = 0
unknown_release_after_hours = 0
"#,
    ));
    for key in [
        "callbacks.public_base_url",
        "callbacks.relay_hosts: \"http://bad\"",
        "callbacks.max_skew_secs",
        "callbacks.relay_attempts",
        "callbacks.relay_backoff_max_ms (10)",
        "tasks.reconcile_max_per_minute",
        "tasks.unknown_release_after_hours",
    ] {
        assert!(msg.contains(key), "{key} missing from {msg}");
    }
    let ok = loads(
        r#"
[callbacks]
public_base_url = "https://gw.example.com/vidu/"
relay_hosts = ["*.corp.example"]
relay_secret = "r"
[callbacks.teams.video]
secret = "v"
"#,
    );
    let c = &ok.settings.callbacks;
    assert_eq!(
        c.own_url().as_deref(),
        Some("https://gw.example.com/vidu/gateway/v1/callbacks/vidu")
    );
    assert_eq!(c.secret_for("video").map(|s| s.expose()), Some("v"));
    assert_eq!(c.secret_for("other").map(|s| s.expose()), Some("r"));
    let shown = ok.settings.redacted_toml();
    assert!(
        !shown.contains("\"v\"") && !shown.contains("\"r\""),
        "{shown}"
    );
}

#[test]
fn the_development_relay_secret_is_refused_against_the_real_vidu() {
    let msg = problems(file(&format!(
        "{MINIMAL}[upstream]\nmode = \"vidu\"\napi_key = \"k\"\n[callbacks]\nrelay_secret = \"{DEV_RELAY_SECRET}\"\n"
    )));
    assert!(
        msg.contains("callbacks.relay_secret is the built-in development secret"),
        "{msg}"
    );
}
