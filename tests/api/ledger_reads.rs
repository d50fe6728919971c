//! No request waits on SQLite: a slow usage report over a large ledger runs while creates go on, and creates of
//! users seen for the first time (whose budgets are loaded from the ledger) are not held behind it.

use std::path::Path;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// Rows in the ledger before the gateway starts: all of team `big`, spread over earlier days.
const ROWS: u32 = 300_000;

/// Writes `ROWS` settled reservations straight into a new ledger (the gateway's own schema).
fn fill_ledger(path: &Path) {
    drop(vidu_gateway::state::ledger::Ledger::open(path).unwrap());
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) \
         INSERT INTO reservations (request_id, user, team, day, month, model, off_peak, estimate, credits, status) \
         SELECT 'seed-' || i, 'u' || (i % 1000), 'big', printf('2026-%02d-%02d', 1 + i % 9, 1 + i % 28), \
                printf('2026-%02d', 1 + i % 9), 'viduq2', i % 2, 55, 50, 'settled' FROM n;"
    ))
    .unwrap();
}

/// Every create has a daily and a monthly budget: a user's first create loads them from the ledger.
fn config(mock: &MockVidu) -> TestConfig {
    TestApp::builder(mock)
        .toml("[policy.defaults]\ndaily_credits = 100000\nmonthly_credits = 1000000\n")
}

fn q2() -> serde_json::Value {
    json!({"model": "viduq2", "images": ["https://example.com/a.png"], "duration": 5})
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[actix_web::test]
async fn creates_are_not_held_behind_a_slow_usage_report() {
    let mock = MockVidu::start().await;
    let config = config(&mock);
    fill_ledger(&config.ledger());
    let app = config.spawn().await;

    // Creates alone: each by a user seen for the first time.
    let mut alone = Vec::new();
    for i in 0..10 {
        let t = Instant::now();
        let (status, _, body) = app
            .create(&app.token(&format!("first-{i}"), "t"), &q2())
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        alone.push(t.elapsed());
    }

    // The report of team `big` sums all of its rows, undated; creates go on while it runs.
    let url = format!("{}/gateway/v1/usage?team=big", app.url);
    let admin = app.admin_token();
    let report = actix_web::rt::spawn(async move {
        let started = Instant::now();
        let mut res = awc::Client::builder()
            .timeout(Duration::from_secs(120))
            .finish()
            .get(url)
            .insert_header(("authorization", format!("Bearer {admin}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body: serde_json::Value =
            serde_json::from_slice(&res.body().limit(1 << 20).await.unwrap()).unwrap();
        (started.elapsed(), body)
    });
    // A head start, so that the report is running on the gateway when the creates arrive.
    actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    let mut during = Vec::new();
    let mut i = 0;
    while !report.is_finished() {
        let t = Instant::now();
        let (status, _, body) = app
            .create(&app.token(&format!("during-{i}"), "t"), &q2())
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if !report.is_finished() {
            during.push(t.elapsed());
        }
        i += 1;
    }
    let (report_took, body) = report.await.unwrap();
    assert_eq!(
        body["team"]["totals"]["admitted"],
        u64::from(ROWS),
        "the report covers the whole ledger"
    );
    assert!(
        during.len() >= 3,
        "only {} creates finished during a report of {report_took:?} (creates alone: {alone:?}): creates wait \
         for the report",
        during.len()
    );
    let (p50_alone, p50_during) = (median(alone.clone()), median(during.clone()));
    assert!(
        p50_during <= p50_alone * 2 + Duration::from_millis(20),
        "create p50 alone {p50_alone:?}, during the report {p50_during:?} ({during:?})"
    );
}
