//! The command line: `check-config` exit codes and redaction, `token`.

use vidu_gateway::config::Secret;

use crate::helpers::*;

/// The base test configuration against the real Vidu's address (never called: these tests only load it).
fn vidu() -> TestConfig {
    TestConfig::new("https://api.vidu.cn")
}

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
    let cfg = vidu().upstream(|u| {
        u.api_key = Secret::default();
        u.api_key_file = Some(key_file.clone().into());
    });
    let path = write(&dir, "gw.toml", &cfg.text());
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
    let invalid = |fragment: &str| vidu().toml(fragment).text();
    let cases = [
        (invalid("[server]\nlisten_port = 1"), "listen_port"),
        (
            vidu().upstream(|u| u.api_key = Secret::default()).text(),
            "upstream.api_key is required when upstream.mode = \"vidu\"",
        ),
        (
            invalid("[upstream]\nconnect_timeout_ms = \"soon\""),
            "connect_timeout_ms",
        ),
        (
            invalid("[auth]\nalgorithms = [\"none\"]"),
            "\"none\" is never accepted",
        ),
        (
            invalid("[upstream]\nbase_url = \"not a url\""),
            "upstream.base_url",
        ),
        (
            invalid(
                "[models.x]\ndurations = { min = 5, max = 4, default = 5 }\nresolutions = []\ndefault_resolution = \"720p\"\ncredits = { base = {}, per_second = {} }\n",
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

/// A syntax error is reported by line and column only: the parser's excerpt of the line would print the secret
/// on it.
#[test]
fn check_config_names_the_line_of_a_syntax_error_but_never_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    // A defect of the text itself: an unterminated string.
    let base = vidu().text();
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

/// The key is sent as `Authorization: Token <key>`; a PEM (several lines) never can be.
#[test]
fn check_config_refuses_an_api_key_file_of_several_lines_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = write(
        &dir,
        "vidu.pem",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n-----END PRIVATE KEY-----\n",
    );
    let cfg = vidu().upstream(|u| {
        u.api_key = Secret::default();
        u.api_key_file = Some(key_file.clone().into());
    });
    let path = write(&dir, "gw.toml", &cfg.text());
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

/// A variable that names no key is the environment's fault, and is named.
#[test]
fn check_config_blames_an_unknown_variable_on_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "gw.toml", &vidu().text());
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

#[test]
fn check_config_refuses_a_body_buffer_cap_below_the_largest_body() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = vidu().toml(
        "[server]\nmax_body_bytes = 1000\nmax_buffered_body_bytes = 999\nbody_read_timeout_ms = 0\n",
    );
    let path = write(&dir, "gw.toml", &cfg.text());
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

/// Runs the binary with its stdout on a pipe whose reader is already gone (`… | head -c 0`, deterministic):
/// (exit code, stderr).
fn run_into_closed_pipe(
    args: &[&str],
    envs: &[(&str, &str)],
    cwd: &std::path::Path,
) -> (i32, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vidu-gateway"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .stdout(writer)
        .stderr(std::process::Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_and_token_exit_quietly_when_the_reader_of_their_output_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.sqlite3");
    drop(vidu_gateway::state::ledger::Ledger::open(&ledger).unwrap());
    let ledger = ledger.display().to_string();
    let env = [("VIDU_GW__STATE__LEDGER_PATH", ledger.as_str())];
    for format in ["json", "table", "csv"] {
        let (code, err) = run_into_closed_pipe(&["usage", "--format", format], &env, dir.path());
        assert_eq!(code, 0, "usage --format {format}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.is_empty(), "quiet: {err}");
    }
    let (code, err) =
        run_into_closed_pipe(&["token", "--sub", "a", "--team", "t"], &[], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "quiet: {err}");
    let (code, err) = run_into_closed_pipe(&["check-config"], &[], dir.path());
    assert_eq!(code, 0, "check-config: {err}");
    assert!(!err.contains("panicked"), "{err}");
    // And a reader that takes only the first bytes, as `| head -c 600` does.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vidu-gateway"))
        .args(["usage", "--format", "json"])
        .env("VIDU_GW__STATE__LEDGER_PATH", &ledger)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn usage_without_a_ledger_names_the_file_it_looked_for_and_the_config_option() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vidu-gateway"));
    let out = cmd
        .arg("usage")
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let expected = dir
        .path()
        .canonicalize()
        .unwrap()
        .join("data/ledger.sqlite3");
    let looked_for = dir.path().join("data/ledger.sqlite3");
    assert!(
        err.contains(&expected.display().to_string())
            || err.contains(&looked_for.display().to_string()),
        "the absolute path: {err}"
    );
    assert!(err.contains("relative"), "{err}");
    assert!(err.contains("--config"), "{err}");
}

#[test]
fn token_requires_a_team_when_the_config_requires_one() {
    let (code, out, err) = run_cli(&["token", "--sub", "alice"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.is_empty());
    assert!(err.contains("--team is required"), "{err}");
    assert!(err.contains("auth.require_team"), "{err}");
    let (code, out, err) = run_cli(
        &["token", "--sub", "alice"],
        &[("VIDU_GW__AUTH__REQUIRE_TEAM", "false")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.trim().starts_with("eyJ"));
}

#[actix_web::test]
async fn token_mints_an_already_expired_token_with_a_negative_ttl() {
    let mock = MockVidu::start().await;
    let config = TestApp::builder(&mock);
    let app = config.clone().spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(&dir, "gw.toml", &config.text());
    for ttl in [["--ttl=-120"].as_slice(), ["--ttl", "-120"].as_slice()] {
        let mut args = vec!["token", "--config", &cfg, "--sub", "alice", "--team", "t"];
        args.extend_from_slice(ttl);
        let (code, out, err) = run_cli(&args, &[]);
        assert_eq!(code, 0, "{ttl:?}: {err}");
        let (status, headers, body) = app.get("/gateway/v1/usage", out.trim()).await;
        assert_eq!(status.as_u16(), 401, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("expired"),
            "{body}"
        );
        assert!(
            header(&headers, "www-authenticate")
                .unwrap()
                .contains("invalid_token")
        );
    }
}

/// `vidu-gateway reservations`: unknown reservations listed, settled and released from the command line, on the
/// state the gateway wrote (the ledger, or Redis); on the memory backend, refused while a gateway serves the ledger.
async fn the_reservations_command_lists_settles_and_releases_unknown_reservations() {
    use actix_web::http::StatusCode;
    use std::time::Duration;

    let mock = MockVidu::start().await;
    mock.respond(|_| Reply::json(200, created_task("1", 40)).delayed(Duration::from_secs(5)));
    let config = TestApp::builder(&mock).upstream(|u| u.request_timeout_ms = 300);
    let memory = !config.on_redis();
    let app = config.clone().spawn().await;
    let token = app.token("alice", "video");
    let body = serde_json::json!({"model": "viduq2", "images": ["https://example.com/a.png"], "duration": 5});
    for _ in 0..2 {
        assert_eq!(
            app.create(&token, &body).await.0,
            StatusCode::GATEWAY_TIMEOUT
        );
    }
    let dir = tempfile::tempdir().unwrap();
    app.handle.stop(true).await;
    let path = write(&dir, "gateway.toml", &config.text());
    if memory {
        // A gateway serving this ledger keeps its budgets in memory (and holds the ledger's lock): the command
        // sends the admin to it, and a second gateway does not start on the same ledger.
        let serving = Binary::start(&config, &[]).await;
        let (code, _, err) = run_cli(&["reservations", "release", "x", "--config", &path], &[]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("POST /gateway/v1/reservations/{id}/settle"),
            "{err}"
        );
        let (code, _, err) = run_cli(&["serve", "--config", &path], &[]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("is in use by a running vidu-gateway"), "{err}");
        drop(serving);
    }
    let list = || {
        let (code, out, err) = run_cli(
            &[
                "reservations",
                "list",
                "--format",
                "json",
                "--config",
                &path,
            ],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let listed = list();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|r| r["state"] == "unknown" && r["user"] == "alice")
    );
    let id = |i: usize| listed[i]["id"].as_str().unwrap().to_owned();
    let (code, out, err) = run_cli(
        &["reservations", "settle", &id(0), "30", "--config", &path],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("settled at 30 credits"), "{out}");
    let (code, _, err) = run_cli(
        &["reservations", "settle", &id(0), "30", "--config", &path],
        &[],
    );
    assert_eq!(code, 1, "only once: {err}");
    assert!(err.contains("no unknown reservation"), "{err}");
    let (code, _, err) = run_cli(&["reservations", "release", &id(1), "--config", &path], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(list(), serde_json::json!([]));
    let (code, out, err) = run_cli(
        &[
            "usage", "--team", "video", "--format", "json", "--config", &path,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let usage: serde_json::Value = serde_json::from_str(&out).unwrap();
    let totals = &usage["team"]["totals"];
    assert_eq!(
        (
            &totals["credits_settled"],
            &totals["credits_released"],
            &totals["credits_unknown"]
        ),
        (
            &serde_json::json!(30),
            &serde_json::json!(55),
            &serde_json::json!(0)
        ),
        "{usage}"
    );
}

crate::on_both_backends!(the_reservations_command_lists_settles_and_releases_unknown_reservations);
