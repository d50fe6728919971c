//! The real binary over time: spend survives a restart, config reloads (SIGHUP, file change) apply at once
//! without resetting counters, an invalid reload keeps the old config serving, and `usage` reads the ledger.

use std::time::Duration;

use actix_web::http::StatusCode;
use serde_json::{Value, json};

use vidu_gateway::config::Secret;
use vidu_gateway::reload;

use crate::helpers::*;

/// `base` (its ledger shared by every variant) with `daily` as each user's daily credit budget.
/// The audit trail's entries of `kind` (`""`: all), newest first, as an admin reads them.
async fn audit_entries(bin_url: &str, kind: &str) -> Vec<Value> {
    let admin = mint(json!({"sub": "root", "team": "ops", "roles": ["gw-admin"]}));
    let filter = if kind.is_empty() {
        String::new()
    } else {
        format!("?kind={kind}")
    };
    let mut res = awc::Client::default()
        .get(format!("{bin_url}/gateway/v1/audit{filter}"))
        .insert_header(("authorization", format!("Bearer {admin}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    v["entries"].as_array().cloned().unwrap_or_default()
}

fn config(base: &TestConfig, daily: u64) -> TestConfig {
    base.clone()
        .toml(&format!("[policy.defaults]\ndaily_credits = {daily}"))
}

async fn create(bin_url: &str, token: &str) -> (StatusCode, Value) {
    let mut res = awc::Client::default()
        .post(format!("{bin_url}/ent/v2/img2video"))
        .insert_header(("authorization", format!("Bearer {token}")))
        .insert_header(("content-type", "application/json"))
        .send_body(json!({"model": "viduq2", "images": ["https://e.com/a.png"]}).to_string())
        .await
        .unwrap();
    let (status, _, body) = read(&mut res).await;
    (status, body)
}

async fn config_version(bin_url: &str) -> String {
    let admin = mint(json!({"sub": "root", "team": "ops", "roles": ["gw-admin"]}));
    let mut res = awc::Client::default()
        .get(format!("{bin_url}/gateway/v1/config"))
        .insert_header(("authorization", format!("Bearer {admin}")))
        .send()
        .await
        .unwrap();
    let (_, _, body) = read(&mut res).await;
    body["version"].as_str().unwrap().to_owned()
}

/// `vidu_gateway_config_reloads_total{outcome}` (0 when not exported yet).
async fn reloads(bin_url: &str, outcome: &str) -> u64 {
    let mut res = awc::Client::default()
        .get(format!("{bin_url}/metrics"))
        .send()
        .await
        .unwrap();
    let text = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    let prefix = format!("vidu_gateway_config_reloads_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

async fn wait_for_reloads(bin_url: &str, outcome: &str, n: u64) {
    for _ in 0..100 {
        if reloads(bin_url, outcome).await >= n {
            return;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {n} reloads with outcome {outcome}");
}

fn log_lines(bin: &Binary, needle: &str) -> usize {
    bin.logs().lines().filter(|l| l.contains(needle)).count()
}

async fn wait_for_version_change(bin_url: &str, old: &str) -> String {
    for _ in 0..100 {
        let v = config_version(bin_url).await;
        if v != old {
            return v;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the configuration was not reloaded");
}

async fn spend_survives_a_restart_on_the_same_ledger() {
    let mock = MockVidu::start().await;
    mock.respond(|_| Reply::json(200, created_task("1", 55)));
    let base = TestApp::builder(&mock);
    let cfg = config(&base, 100);
    let token = mint(json!({"sub": "alice", "team": "mkt"}));
    let mut bin = Binary::start(&cfg, &[]).await;
    assert_eq!(create(&bin.url(), &token).await.0, StatusCode::OK);
    bin.signal("TERM");
    assert_eq!(bin.wait(Duration::from_secs(10)).await, Some(0));
    drop(bin);

    let bin = Binary::start(&cfg, &[]).await;
    let (status, body) = create(&bin.url(), &token).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "55 + 55 > 100 after the restart: {body}"
    );
    assert_eq!(body["reason"], "CreditBudgetExhausted");
    assert_eq!(mock.received().len(), 1);
}

async fn a_reload_that_lowers_a_budget_applies_at_once_without_resetting_spend() {
    let mock = MockVidu::start().await;
    mock.respond(|_| Reply::json(200, created_task("1", 55)));
    let base = TestApp::builder(&mock);
    let bin = Binary::start(&config(&base, 1000), &[]).await;
    let token = mint(json!({"sub": "alice", "team": "mkt"}));
    assert_eq!(create(&bin.url(), &token).await.0, StatusCode::OK);
    let v1 = config_version(&bin.url()).await;

    // SIGHUP after rewriting the file: 55 used, the new limit is 100 → the next 55 does not fit.
    std::fs::write(bin.config_path(), config(&base, 100).text()).unwrap();
    bin.signal("HUP");
    let v2 = wait_for_version_change(&bin.url(), &v1).await;
    let (status, body) = create(&bin.url(), &token).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (
            StatusCode::TOO_MANY_REQUESTS,
            json!("CreditBudgetExhausted")
        )
    );
    assert!(
        body["message"].as_str().unwrap().contains("55 of 100"),
        "{body}"
    );

    // An invalid file is refused: the running config (v2) keeps serving.
    std::fs::write(bin.config_path(), "[server]\nlisten_port = 1\n").unwrap();
    bin.signal("HUP");
    wait_for_reloads(&bin.url(), "invalid", 1).await;
    assert_eq!(config_version(&bin.url()).await, v2);
    let mut res = awc::Client::default()
        .get(format!("{}/metrics", bin.url()))
        .send()
        .await
        .unwrap();
    let text = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    assert!(
        text.contains(r#"vidu_gateway_config_reloads_total{outcome="invalid"}"#),
        "{text}"
    );
    assert!(
        bin.logs().contains("listen_port"),
        "the log names the key at fault"
    );

    // Editing the file is enough (no signal): raising the limit admits the request again.
    std::fs::write(bin.config_path(), config(&base, 200).text()).unwrap();
    wait_for_version_change(&bin.url(), &v2).await;
    assert_eq!(create(&bin.url(), &token).await.0, StatusCode::OK);
}

// On Redis: spend is kept in Redis across a gateway restart; a reload touches no counter there.
crate::on_both_backends!(
    spend_survives_a_restart_on_the_same_ledger,
    a_reload_that_lowers_a_budget_applies_at_once_without_resetting_spend,
    the_usage_command_reports_what_was_spent,
);

/// A reload that rotates `upstream.api_key` is used by the very next call to Vidu (the client keeps the
/// `Authorization` value of the configuration in force, rebuilt when a reload swaps it).
#[actix_web::test]
async fn a_reload_that_rotates_the_enterprise_key_applies_to_the_next_call() {
    let mock = MockVidu::start().await;
    // One worker, so the call after the reload goes through the client that made the call before it.
    let cfg = config(&TestApp::builder(&mock), 1000).server(|s| s.workers = 1);
    let bin = Binary::start(&cfg, &[]).await;
    let token = mint(json!({"sub": "alice", "team": "mkt"}));
    assert_eq!(create(&bin.url(), &token).await.0, StatusCode::OK);
    let v1 = config_version(&bin.url()).await;

    let rotated = cfg
        .clone()
        .upstream(|u| u.api_key = Secret::new("rotated-enterprise-key"));
    std::fs::write(bin.config_path(), rotated.text()).unwrap();
    bin.signal("HUP");
    wait_for_reloads(&bin.url(), "applied", 1).await;
    assert_eq!(
        config_version(&bin.url()).await,
        v1,
        "the published version is not a function of the secrets"
    );
    bin.wait_for_log(r#""secrets_changed":"upstream.api_key""#)
        .await;
    // The audit trail names the rotated secret by its key, never its value.
    let audit = audit_entries(&bin.url(), "config_reload").await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(
        (&audit[0]["outcome"], &audit[0]["detail"]["secrets_changed"]),
        (&json!("applied"), &json!(["upstream.api_key"]))
    );
    assert_eq!(
        audit[0]["detail"]["keys_changed"],
        json!(["upstream.api_key"])
    );
    let whole = audit_entries(&bin.url(), "").await;
    let text = serde_json::to_string(&whole).unwrap();
    assert!(
        !text.contains("rotated-enterprise-key") && !text.contains(VIDU_KEY),
        "{text}"
    );
    assert!(bin.logs().contains(r#""target":"audit""#), "{}", bin.logs());
    assert_eq!(create(&bin.url(), &token).await.0, StatusCode::OK);
    let auths: Vec<String> = mock
        .received()
        .iter()
        .filter_map(|r| r.header("authorization").map(str::to_owned))
        .collect();
    assert_eq!(
        auths,
        [
            format!("Token {VIDU_KEY}"),
            "Token rotated-enterprise-key".to_owned()
        ]
    );
}

/// One edit announced twice (SIGHUP, and the file watcher seeing the new content) is one reload: logged once,
/// counted once, whichever comes first.
#[actix_web::test]
async fn one_edit_and_a_sighup_reload_once() {
    let mock = MockVidu::start().await;
    let base = TestApp::builder(&mock);
    let bin = Binary::start(&config(&base, 1000), &[]).await;
    let url = bin.url();
    // Longer than the watcher needs to see a change (a poll, then a stable poll).
    let watcher_settles = Duration::from_millis(4 * reload::POLL_INTERVAL.as_millis() as u64);

    // The gateway has been running for a while (its file watcher has read the file once)...
    actix_web::rt::time::sleep(2 * reload::POLL_INTERVAL).await;
    // ...when an invalid edit is made, then SIGHUP sent at once; the watcher sees the same edit a moment later.
    std::fs::write(bin.config_path(), "[server]\nlisten_port = 1\n").unwrap();
    bin.signal("HUP");
    wait_for_reloads(&url, "invalid", 1).await;
    actix_web::rt::time::sleep(watcher_settles).await;
    assert_eq!(reloads(&url, "invalid").await, 1, "{}", bin.logs());
    let refused = audit_entries(&url, "config_reload").await;
    assert_eq!(refused.len(), 1, "one refusal, audited once: {refused:?}");
    assert_eq!(refused[0]["outcome"], "refused");
    assert!(
        refused[0]["detail"]["why"]
            .as_str()
            .unwrap()
            .contains("listen_port"),
        "{refused:?}"
    );
    assert_eq!(log_lines(&bin, "configuration reload refused"), 1);

    // A valid edit, then SIGHUP.
    std::fs::write(bin.config_path(), config(&base, 500).text()).unwrap();
    bin.signal("HUP");
    wait_for_reloads(&url, "applied", 1).await;
    actix_web::rt::time::sleep(watcher_settles).await;
    assert_eq!(reloads(&url, "applied").await, 1);
    assert_eq!(reloads(&url, "unchanged").await, 0, "{}", bin.logs());
    assert_eq!(log_lines(&bin, "reloading the configuration"), 2);

    // The other order: the watcher reloads an edit, and a SIGHUP after it has nothing left to do.
    std::fs::write(bin.config_path(), config(&base, 400).text()).unwrap();
    wait_for_reloads(&url, "applied", 2).await;
    bin.signal("HUP");
    wait_for_reloads(&url, "unchanged", 1).await;
    assert_eq!(reloads(&url, "applied").await, 2);
    assert_eq!(log_lines(&bin, "reloading the configuration"), 3);
    assert_eq!(log_lines(&bin, "configuration reloaded"), 2);
    // A SIGHUP with nothing new is not an attempt: no audit entry. An edit that leaves the configuration as it is
    // (a comment; or the fix that reverts a refused edit) is one, audited as unchanged.
    let outcomes = |entries: Vec<Value>| -> Vec<String> {
        entries
            .iter()
            .map(|e| e["outcome"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        outcomes(audit_entries(&url, "config_reload").await),
        ["applied", "applied", "refused"]
    );
    let same = format!("{}\n# a comment\n", config(&base, 400).text());
    std::fs::write(bin.config_path(), same).unwrap();
    bin.signal("HUP");
    wait_for_reloads(&url, "unchanged", 2).await;
    assert_eq!(
        outcomes(audit_entries(&url, "config_reload").await),
        ["unchanged", "applied", "applied", "refused"]
    );
}

/// A TOML syntax error on a secret's line (an unterminated string) is logged by line and column; the line's text,
/// and so the secret, is not.
#[actix_web::test]
async fn a_reload_with_a_syntax_error_logs_the_line_never_its_text() {
    let mock = MockVidu::start().await;
    let cfg = config(&TestApp::builder(&mock), 1000);
    let bin = Binary::start(&cfg, &[]).await;
    // A defect of the text itself: an unterminated string.
    let cfg = cfg.text();
    let broken = cfg.replace(
        &format!("api_key = \"{VIDU_KEY}\""),
        &format!("api_key = \"{VIDU_KEY}"),
    );
    assert_ne!(broken, cfg);
    let line = broken
        .lines()
        .position(|l| l.starts_with("api_key"))
        .unwrap()
        + 1;
    std::fs::write(bin.config_path(), broken).unwrap();
    bin.signal("HUP");
    let logs = bin.wait_for_log("configuration reload refused").await;
    assert!(!logs.contains(VIDU_KEY), "the secret is logged: {logs}");
    assert!(
        logs.contains(&format!("TOML syntax error at line {line}, column")),
        "{logs}"
    );
}

/// The `usage` command reads the same state as the API: the ledger file, or Redis.
async fn the_usage_command_reports_what_was_spent() {
    let mock = MockVidu::start().await;
    mock.respond(|_| Reply::json(200, created_task("1", 40)));
    let base = TestApp::builder(&mock);
    let cfg = config(&base, 100);
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("gw.toml");
    std::fs::write(&cfg_path, cfg.text()).unwrap();
    let bin = Binary::start(&cfg, &[]).await;
    let alice = mint(json!({"sub": "alice", "team": "mkt"}));
    let bob = mint(json!({"sub": "bob", "team": "sales"}));
    assert_eq!(create(&bin.url(), &alice).await.0, StatusCode::OK);
    assert_eq!(create(&bin.url(), &alice).await.0, StatusCode::OK); // 40 + 55 ≤ 100
    assert_eq!(
        create(&bin.url(), &alice).await.0,
        StatusCode::TOO_MANY_REQUESTS
    ); // 80 + 55 > 100
    assert_eq!(create(&bin.url(), &bob).await.0, StatusCode::OK);

    let cfg_arg = cfg_path.to_str().unwrap();
    let (code, out, err) = run_cli(
        &[
            "usage", "--config", cfg_arg, "--team", "mkt", "--format", "json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let t = &v["team"]["totals"];
    assert_eq!(
        (t["admitted"].clone(), t["rejected"].clone()),
        (json!(2), json!(1))
    );
    assert_eq!(t["credits_settled"], 80);
    assert_eq!(
        v["team"]["days"][0]["rejected_by_reason"]["CreditBudgetExhausted"],
        1
    );

    let (code, out, _) = run_cli(&["usage", "--config", cfg_arg, "--format", "csv"], &[]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("scope,name,day,admitted"));
    assert!(
        lines[1].starts_with("all,all,") && lines[1].contains(",3,1,0,120,"),
        "{out}"
    );

    let (code, out, _) = run_cli(&["usage", "--config", cfg_arg, "--user", "bob"], &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("user bob") && out.contains("40 of 100 used"),
        "{out}"
    );

    let (code, _, err) = run_cli(&["usage", "--config", cfg_arg, "--from", "yesterday"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("YYYY-MM-DD"));
}
