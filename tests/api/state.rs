//! The memory backend's ledger as ops meet it: a ledger file deleted or replaced under a running gateway is
//! noticed (readyz, admission per `state.on_unavailable`), a task id reused by the upstream keeps its first owner,
//! the team budget metric reports the team's budget, and usage queries are read strictly.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use serde_json::json;

use vidu_gateway::config::OnUnavailable;

use crate::helpers::*;

/// The base configuration with `state.on_unavailable` set.
fn config(mock: &MockVidu, on_unavailable: OnUnavailable) -> TestConfig {
    TestApp::builder(mock).state(|s| s.on_unavailable = on_unavailable)
}

/// Polls `/readyz` until it answers 503 (the guard looks every 200 ms while idle).
async fn readyz_refuses(app: &TestApp) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, body) = app.get_open("/readyz").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return body;
        }
        assert!(Instant::now() < deadline, "readyz stayed {status}: {body}");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn a_deleted_ledger_makes_readyz_fail_naming_it_and_fail_closed_refuses() {
    let mock = MockVidu::start().await;
    let cfg = config(&mock, OnUnavailable::FailClosed);
    let ledger = cfg.ledger();
    let app = cfg.spawn().await;
    let alice = app.token("alice", "t");
    assert_eq!(app.create(&alice, &small_request()).await.0, StatusCode::OK);
    assert_eq!(app.get_open("/readyz").await.0, StatusCode::OK);

    std::fs::remove_file(&ledger).unwrap();
    let body = readyz_refuses(&app).await;
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(&ledger.display().to_string()), "{body}");
    assert!(message.contains("deleted"), "{body}");

    let (status, headers, body) = app.create(&alice, &small_request()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_envelope(status, &headers, &body, "ServiceUnavailable");
    assert!(header(&headers, "retry-after").is_some());
    assert_eq!(
        mock.received().len(),
        1,
        "nothing forwarded once the ledger is lost"
    );
}

#[actix_web::test]
async fn a_replaced_ledger_under_fail_open_keeps_admitting() {
    let mock = MockVidu::start().await;
    let cfg = config(&mock, OnUnavailable::FailOpen);
    let ledger = cfg.ledger();
    let app = cfg.spawn().await;
    let alice = app.token("alice", "t");
    assert_eq!(app.create(&alice, &small_request()).await.0, StatusCode::OK);

    let other = ledger.with_file_name("restored-from-backup.sqlite3");
    std::fs::write(&other, b"").unwrap();
    std::fs::rename(&other, &ledger).unwrap();
    let body = readyz_refuses(&app).await;
    assert!(
        body["message"].as_str().unwrap().contains("replaced"),
        "{body}"
    );
    assert_eq!(
        app.create(&alice, &small_request()).await.0,
        StatusCode::OK,
        "fail_open admits while the ledger is lost"
    );
    assert_eq!(mock.received().len(), 2);
}

#[actix_web::test]
async fn a_task_id_the_upstream_hands_out_twice_stays_with_its_first_owner() {
    let mock = MockVidu::start().await;
    mock.respond(|r| {
        if r.path.contains("/creations") {
            Reply::json(
                200,
                json!({"id": "dup-1", "state": "processing", "creations": []}),
            )
        } else {
            Reply::json(200, created_task("dup-1", 25))
        }
    });
    let app = config(&mock, OnUnavailable::FailClosed)
        .toml("[policy]\nteam_can_read_tasks = false\n")
        .spawn()
        .await;
    let (alice, mallory) = (app.token("alice", "a"), app.token("mallory", "m"));
    assert_eq!(app.create(&alice, &small_request()).await.0, StatusCode::OK);
    assert_eq!(
        app.create(&mallory, &small_request()).await.0,
        StatusCode::OK
    );

    let path = "/ent/v2/tasks/dup-1/creations";
    assert_eq!(app.get(path, &alice).await.0, StatusCode::OK);
    let (status, headers, body) = app.get(path, &mallory).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_envelope(status, &headers, &body, "TaskNotFound");
}

/// The metric named for a team reports the team's budget, not the budget of whichever member asked last.
#[actix_web::test]
async fn the_team_budget_metric_reports_the_team_budget() {
    let mock = MockVidu::start().await;
    mock.respond(|_| Reply::json(200, created_task("t-1", 55)));
    let app = config(&mock, OnUnavailable::FailClosed)
        .toml("[policy.defaults]\ndaily_credits = 100\n[policy.teams.mkt]\nteam_daily_credits = 1000\n")
        .spawn()
        .await;
    // viduq2 720p 5 s: 55 credits each; alice's own budget (100) is tighter than the team's.
    let body = json!({"model": "viduq2", "images": ["https://example.com/a.png"], "duration": 5});
    let (status, headers, _) = app.create(&app.token("alice", "mkt"), &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "x-credits-remaining"), Some("45"));
    assert_eq!(
        app.create(&app.token("bob", "mkt"), &body).await.0,
        StatusCode::OK
    );
    let text = app.metrics_text().await;
    assert!(
        text.contains("vidu_gateway_budget_remaining_credits{team=\"mkt\"} 890"),
        "{text}"
    );
}

/// A parameter sent twice is a mistake in the query, and the answer says so (not "send a JSON object body").
#[actix_web::test]
async fn a_duplicated_query_parameter_is_a_400_about_the_query() {
    let mock = MockVidu::start().await;
    let app = config(&mock, OnUnavailable::FailClosed).spawn().await;
    let (status, headers, body) = app
        .get("/gateway/v1/usage?user=a&user=b", &app.admin_token())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_envelope(status, &headers, &body, "BadRequest");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("query string"), "{message}");
    assert!(message.contains("duplicate field `user`"), "{message}");
}
