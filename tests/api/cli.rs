//! The command line: `check-config` exit codes and redaction, `token`.

use crate::helpers::*;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn check_config_accepts_the_built_in_file_and_redacts_its_secret() {
    let (code, out, err) = run_cli(&["check-config"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hs256_secret = \"<redacted>\""), "{out}");
    assert!(!out.contains(vidu_gateway::config::DEV_HS256_SECRET));
    assert!(err.contains("is valid"));
}

#[test]
fn check_config_prints_no_secret_given_inline_by_env_or_by_file() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = write(&dir, "vidu.key", "  file-vidu-key-abcdef\n");
    let cfg = base_config("https://api.vidu.cn").replace(
        &format!("api_key = \"{VIDU_KEY}\""),
        &format!("api_key_file = \"{key_file}\""),
    );
    let path = write(&dir, "gw.toml", &cfg);
    let (code, out, err) = run_cli(
        &["check-config", "--config", &path],
        &[(
            "VIDU_GW__STATE__REDIS_URL",
            "redis://:env-redis-password@127.0.0.1:6379/0",
        )],
    );
    assert_eq!(code, 0, "{err}");
    for secret in ["file-vidu-key-abcdef", HS_SECRET, "env-redis-password"] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} leaked"
        );
    }
    assert!(out.contains("api_key = \"<redacted>\""), "{out}");
    assert!(
        out.contains(&key_file),
        "the file path is shown, not its content"
    );
}

#[test]
fn check_config_exits_non_zero_and_names_the_key_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            base_config("https://api.vidu.cn").replace("[server]\n", "[server]\nlisten_port = 1\n"),
            "listen_port",
        ),
        (
            base_config("https://api.vidu.cn").replace(&format!("api_key = \"{VIDU_KEY}\""), ""),
            "upstream.api_key is required when upstream.mode = \"vidu\"",
        ),
        (
            base_config("https://api.vidu.cn")
                .replace("connect_timeout_ms = 1000", "connect_timeout_ms = \"soon\""),
            "connect_timeout_ms",
        ),
        (
            base_config("https://api.vidu.cn")
                .replace("algorithms = [\"HS256\"]", "algorithms = [\"none\"]"),
            "\"none\" is never accepted",
        ),
        (base_config("not a url"), "upstream.base_url"),
        (
            format!(
                "{}\n[models.x]\ndurations = {{ min = 5, max = 4, default = 5 }}\nresolutions = []\ndefault_resolution = \"720p\"\ncredits = {{ base = {{}}, per_second = {{}} }}\n",
                base_config("https://api.vidu.cn")
            ),
            "models.x.durations",
        ),
        ("[server\n".to_owned(), "TOML"),
    ];
    for (text, needle) in cases {
        let path = write(&dir, "bad.toml", &text);
        let (code, out, err) = run_cli(&["check-config", "--config", &path], &[]);
        assert_eq!(code, 1, "{needle}: {err}");
        assert!(
            err.contains(needle) || err.to_lowercase().contains(&needle.to_lowercase()),
            "expected {needle:?} in: {err}"
        );
        assert!(out.is_empty());
        assert!(!err.contains(VIDU_KEY) && !err.contains(HS_SECRET));
    }
    let (code, _, err) = run_cli(&["check-config", "--config", "/nonexistent/gw.toml"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/gw.toml"));
}

/// Issue 10 item 5: the parser's excerpt of the line would print the secret on it.
#[test]
fn check_config_names_the_line_of_a_syntax_error_but_never_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_config("https://api.vidu.cn");
    for (secret, line_of) in [(VIDU_KEY, "api_key"), (HS_SECRET, "hs256_secret")] {
        let broken = base.replace(&format!("\"{secret}\""), &format!("\"{secret}"));
        assert_ne!(broken, base);
        let line = broken.lines().position(|l| l.starts_with(line_of)).unwrap() + 1;
        let path = write(&dir, "broken.toml", &broken);
        let (code, out, err) = run_cli(&["check-config", "--config", &path], &[]);
        assert_eq!(code, 1, "{err}");
        assert!(!err.contains(secret) && !out.contains(secret), "{err}");
        assert!(
            err.contains(&format!("TOML syntax error at line {line}, column")),
            "{err}"
        );
    }
}

/// Issue 10 item 11: the key is sent as `Authorization: Token <key>`; a PEM (several lines) never can be.
#[test]
fn check_config_refuses_an_api_key_file_of_several_lines_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = write(
        &dir,
        "vidu.pem",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n-----END PRIVATE KEY-----\n",
    );
    let cfg = base_config("https://api.vidu.cn").replace(
        &format!("api_key = \"{VIDU_KEY}\""),
        &format!("api_key_file = \"{key_file}\""),
    );
    let path = write(&dir, "gw.toml", &cfg);
    let (code, _, err) = run_cli(&["check-config", "--config", &path], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "upstream.api_key_file: {key_file} holds several lines"
        )),
        "{err}"
    );
    assert!(!err.contains("MIIEvQ"), "{err}");
}

/// Issue 10 item 13: a variable that names no key is the environment's fault, and is named.
#[test]
fn check_config_blames_an_unknown_variable_on_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "gw.toml", &base_config("https://api.vidu.cn"));
    let (code, _, err) = run_cli(
        &["check-config", "--config", &path],
        &[
            ("VIDU_GW__UPSTREAM__API_KEYFILE", "/run/secrets/k"),
            ("VIDU_GW__POLICY__DEFAULTS__DAILY_CREDITS", "200"),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("with its VIDU_GW__* environment overrides is invalid"),
        "{err}"
    );
    assert!(
        err.contains("environment variable VIDU_GW__UPSTREAM__API_KEYFILE: upstream.api_keyfile is not a known key (did you mean upstream.api_key_file?)"),
        "{err}"
    );
    assert_eq!(
        err.matches("\n  - ").count(),
        1,
        "the number key accepts \"200\": {err}"
    );
}

#[test]
fn serve_refuses_an_invalid_file_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "bad.toml", "[upstream]\nmode = \"vidu\"\n");
    let (code, _, err) = run_cli(&["serve", "--config", &path], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("upstream.api_key"), "{err}");
}

#[test]
fn the_development_secret_is_refused_against_the_real_vidu() {
    let (code, _, err) = run_cli(
        &["check-config"],
        &[
            ("VIDU_GW__UPSTREAM__MODE", "vidu"),
            ("VIDU_GW__UPSTREAM__API_KEY", "k-123456"),
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("development secret"), "{err}");
    assert!(!err.contains("k-123456"));
}

#[test]
fn token_mints_a_token_the_gateway_accepts() {
    let (code, out, err) = run_cli(
        &[
            "token",
            "--sub",
            "alice",
            "--team",
            "marketing",
            "--role",
            "a",
            "--role",
            "b",
            "--ttl",
            "60",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let token = out.trim();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(vidu_gateway::config::DEV_HS256_SECRET.as_bytes()),
        &v,
    )
    .unwrap();
    assert_eq!(data.claims["sub"], "alice");
    assert_eq!(data.claims["team"], "marketing");
    assert_eq!(data.claims["roles"], serde_json::json!(["a", "b"]));
    let ttl = data.claims["exp"].as_i64().unwrap() - data.claims["iat"].as_i64().unwrap();
    assert_eq!(ttl, 60);
}
