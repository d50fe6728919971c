//! Watching the Vidu balance (`GET /ent/v2/credits` read every `balance.poll_secs`: the balance, Vidu's
//! concurrency, the burn rate and runway, on `/metrics` and for admins in usage), and the caller's own view of
//! `GET /ent/v2/credits` (what they may spend and run, never the company's wallet).

use actix_web::http::StatusCode;
use jiff::SignedDuration;
use serde_json::{Value, json};

use vidu_gateway::config::UpstreamMode;
use vidu_gateway::forward::sandbox::SANDBOX_BALANCE;

use crate::helpers::*;
use crate::lifecycle::{eventually, living_vidu, q2};

/// A metric's value in the exposition text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The balance the sandbox reports goes down as tasks are charged (and back up for one that failed); the watch
/// exports it with Vidu's concurrency figures, the burn rate from the gateway's ledger and the runway.
async fn the_balance_watch_follows_what_the_sandbox_charges() {
    let app = TestConfig::new("http://127.0.0.1:9")
        .upstream(|u| {
            u.mode = UpstreamMode::Sandbox;
            u.sandbox_complete_after_secs = 10;
        })
        .settings(|s| s.balance.poll_secs = 60)
        .spawn()
        .await;
    let text = eventually("a first reading", || async {
        let text = app.metrics_text().await;
        metric(&text, "vidu_gateway_vidu_credits_remaining")
            .is_some_and(|v| v > 0.0)
            .then_some(text)
    })
    .await;
    assert_eq!(
        metric(&text, "vidu_gateway_vidu_credits_remaining"),
        Some(SANDBOX_BALANCE as f64)
    );
    assert_eq!(
        metric(&text, "vidu_gateway_vidu_concurrency_limit"),
        Some(5.0)
    );
    assert_eq!(
        metric(&text, "vidu_gateway_vidu_credits_burn_per_hour"),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "vidu_gateway_vidu_credits_runway_hours"),
        Some(f64::INFINITY),
        "nothing spent: no end in sight"
    );
    let token = app.token("alice", "video");
    let body = json!({"model": "viduq1", "images": ["https://example.com/a.png"], "duration": 5});
    let (status, _, first) = app.create(&token, &body).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let charged = first["credits"].as_u64().unwrap();
    let mut failing = body.clone();
    failing["prompt"] = json!("a cat [fail]");
    let (status, _, _) = app.create(&token, &failing).await;
    assert_eq!(status, StatusCode::OK);
    let expected = (SANDBOX_BALANCE - 2 * charged) as f64;
    let text = eventually("two tasks charged", || async {
        let text = app.metrics_text().await;
        (metric(&text, "vidu_gateway_vidu_credits_remaining") == Some(expected)).then_some(text)
    })
    .await;
    assert_eq!(
        metric(&text, "vidu_gateway_vidu_current_concurrency"),
        Some(2.0)
    );
    let burn = metric(&text, "vidu_gateway_vidu_credits_burn_per_hour").unwrap();
    assert!((burn - 2.0 * charged as f64 / 24.0).abs() < 1e-6, "{burn}");
    let runway = metric(&text, "vidu_gateway_vidu_credits_runway_hours").unwrap();
    assert!((runway - expected / burn).abs() < 1e-3, "{runway}");
    // The failing task ends: Vidu gives its credits back.
    app.clock.advance(SignedDuration::from_secs(11));
    let (_, _, usage) = eventually("the refund seen", || async {
        let answer = app.get("/gateway/v1/usage", &app.admin_token()).await;
        (answer.2["vidu_balance"]["credits_remaining"] == json!(SANDBOX_BALANCE - charged))
            .then_some(answer)
    })
    .await;
    let balance = &usage["vidu_balance"];
    assert_eq!(balance["concurrency_limit"], 5, "{usage}");
    assert!(balance["burn_per_hour"].as_f64().unwrap() > 0.0, "{usage}");
    assert!(balance["read_at"].is_string(), "{usage}");
    // Admins only.
    let (_, _, own) = app.get("/gateway/v1/usage", &token).await;
    assert!(own.get("vidu_balance").is_none(), "{own}");
    let text = app.metrics_text().await;
    assert!(
        text.contains(r#"vidu_gateway_balance_polls_total{outcome="ok"}"#),
        "{text}"
    );
}

/// Off by default in tests: nothing asks Vidu for the balance. On: a failed read is counted and the old figures
/// stay.
async fn a_balance_vidu_does_not_answer_is_counted_as_an_error() {
    let mock = MockVidu::start().await;
    mock.respond(|_| Reply::json(503, json!({"reason": "SystemThrottling"})));
    let app = TestApp::builder(&mock)
        .settings(|s| s.balance.poll_secs = 60)
        .spawn()
        .await;
    eventually("a failed read counted", || async {
        let text = app.metrics_text().await;
        text.contains(r#"vidu_gateway_balance_polls_total{outcome="error"}"#)
            .then_some(())
    })
    .await;
    assert!(
        mock.received()
            .iter()
            .all(|r| r.method == "GET" && r.path.starts_with("/ent/v2/credits")),
        "the watch only reads the balance"
    );
    let (_, _, usage) = app.get("/gateway/v1/usage", &app.admin_token()).await;
    assert!(usage.get("vidu_balance").is_none(), "never read: {usage}");
}

/// `GET /ent/v2/credits` answers what the caller may spend (their tightest budget) and run (their tightest
/// running-task cap and what runs in its scope), in Vidu's shape, without asking Vidu.
async fn a_caller_sees_what_they_may_spend_and_run_not_the_company_wallet() {
    let mock = MockVidu::start().await;
    living_vidu(&mock, 40);
    let app = TestApp::builder(&mock)
        .toml(
            "[policy.defaults]\ndaily_credits = 100\nmax_running_tasks = 3\n\
             [policy.teams.video]\nteam_daily_credits = 500\nteam_max_running_tasks = 2\n",
        )
        .spawn()
        .await;
    let alice = app.token("alice", "video");
    let (status, _, task) = app.create(&alice, &q2()).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    let (status, headers, credits) = app.get("/ent/v2/credits?show_detail=true", &alice).await;
    assert_eq!(status, StatusCode::OK, "{credits}");
    assert_eq!(header(&headers, "cache-control"), Some("no-store"));
    let remains: &Value = &credits["remains"][0];
    assert_eq!(
        remains["credit_remain"], 60,
        "100 a day, 40 charged: {credits}"
    );
    // The team cap (2, one running) has less room than alice's own (3, one running).
    assert_eq!(
        (
            &remains["concurrency_limit"],
            &remains["current_concurrency"],
            &remains["queue_count"]
        ),
        (&json!(2), &json!(1), &json!(0)),
        "{credits}"
    );
    // A user no budget applies to may spend without a gateway limit: never the company's balance.
    let (_, _, free) = app
        .get("/ent/v2/credits", &app.token("bob", "research"))
        .await;
    assert_eq!(
        free["remains"][0]["credit_remain"], 100,
        "bob has the defaults: {free}"
    );
    let app2 = TestApp::builder(&mock).spawn().await;
    let (_, _, unlimited) = app2.get("/ent/v2/credits", &app2.token("carol", "x")).await;
    assert_eq!(
        unlimited["remains"][0]["credit_remain"],
        json!(vidu_gateway::usage::UNLIMITED_CREDITS),
        "{unlimited}"
    );
    assert!(
        !mock
            .received()
            .iter()
            .any(|r| r.path.starts_with("/ent/v2/credits")),
        "the caller's view never asks Vidu"
    );
    let (status, _, _) = app.get_open("/ent/v2/credits").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

crate::on_both_backends!(
    the_balance_watch_follows_what_the_sandbox_charges,
    a_balance_vidu_does_not_answer_is_counted_as_an_error,
    a_caller_sees_what_they_may_spend_and_run_not_the_company_wallet,
);

/// Under `balance.warn_below`, every read logs a WARN with the balance, the burn rate and the runway (the real
/// binary, its JSON log on stderr).
#[actix_web::test]
async fn a_balance_under_warn_below_is_logged_at_warn() {
    let config = TestConfig::new("http://127.0.0.1:9")
        .upstream(|u| u.mode = UpstreamMode::Sandbox)
        .settings(|s| {
            s.balance.poll_secs = 60;
            s.balance.warn_below = SANDBOX_BALANCE + 1;
        });
    let bin = Binary::start(&config, &[]).await;
    let needle = "the Vidu balance is below balance.warn_below";
    let logs = bin.wait_for_log(needle).await;
    let line = logs.lines().find(|l| l.contains(needle)).unwrap();
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["level"], "WARN", "{line}");
    assert_eq!(v["credits_remaining"], SANDBOX_BALANCE, "{line}");
    assert_eq!(v["warn_below"], SANDBOX_BALANCE + 1, "{line}");
}
