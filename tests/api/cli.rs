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

#[test]
fn check_config_refuses_a_body_buffer_cap_below_the_largest_body() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config("https://api.vidu.cn").replace(
        "[server]\n",
        "[server]\nmax_body_bytes = 1000\nmax_buffered_body_bytes = 999\nbody_read_timeout_ms = 0\n",
    );
    let path = write(&dir, "gw.toml", &cfg);
    let (code, _, err) = run_cli(&["check-config", "--config", &path], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("server.max_buffered_body_bytes = 999 is below server.max_body_bytes = 1000"),
        "{err}"
    );
    assert!(
        err.contains("server.body_read_timeout_ms must be at least 1"),
        "{err}"
    );
}
