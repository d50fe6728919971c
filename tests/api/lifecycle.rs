//! Tasks followed to their end: refunds to the creation period, final credits, cancels, Vidu's callbacks (signature,
//! replay, a lying body), reconciliation (rate, lease, two replicas), relays to the teams' endpoints, the task
//! list, and unknown reservations — against a mock Vidu whose tasks change state.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use vidu_gateway::callbacks::signature::{signed_headers, verify};

use vidu_gateway::clock::Clock as _;
use vidu_gateway::config::HostPattern;

use crate::helpers::*;

/// Where the gateway says Vidu reaches it (a proxy in front strips `/vidu`): callbacks are signed for this URL.
pub(crate) const PUBLIC: &str = "https://gw.example.com/vidu";
const RELAY_SECRET: &str = "team-relay-secret-0123456789";

/// Task states as the mock Vidu reports them, by task id.
pub(crate) type States = Arc<Mutex<HashMap<String, Value>>>;

/// Makes `mock` a Vidu whose tasks live: creates answer a new id charging `credits` (state `created`), queries
/// answer the task's current state (404 for an unknown id), cancels set `cancelled`.
pub(crate) fn living_vidu(mock: &MockVidu, credits: u64) -> States {
    let states: States = Arc::default();
    let next = Arc::new(AtomicU64::new(900_000_000_000_001));
    let s = states.clone();
    mock.respond(move |r| {
        let path = r.path.split('?').next().unwrap_or_default().to_owned();
        if r.method == "POST" && path == "/ent/v2/img2video" {
            let id = next.fetch_add(1, Ordering::SeqCst).to_string();
            s.lock().unwrap().insert(
                id.clone(),
                json!({"id": id, "state": "created", "credits": credits, "creations": []}),
            );
            return Reply::json(200, created_task(&id, credits));
        }
        let Some(rest) = path.strip_prefix("/ent/v2/tasks/") else {
            return Reply::json(404, json!({"reason": "NotFound"}));
        };
        let (id, what) = rest.split_once('/').unwrap_or((rest, ""));
        let mut states = s.lock().unwrap();
        match (r.method.as_str(), what, states.get_mut(id)) {
            ("GET", "creations", Some(v)) => Reply::json(200, v.clone()),
            ("POST", "cancel", Some(v)) => {
                v["state"] = json!("cancelled");
                v["credits"] = json!(0);
                Reply::json(200, json!({}))
            }
            _ => Reply::json(
                404,
                json!({"reason": "TaskNotFound", "message": "task not found"}),
            ),
        }
    });
    states
}

pub(crate) fn set_state(states: &States, id: &str, state: &str, credits: u64) {
    let mut s = states.lock().unwrap();
    let v = s.get_mut(id).unwrap();
    v["state"] = json!(state);
    v["credits"] = json!(credits);
}

pub(crate) fn q2() -> Value {
    json!({"model": "viduq2", "images": ["https://example.com/a.png"], "duration": 5})
}

/// Polls `f` every 20 ms for up to 5 s until it returns `Some`.
pub(crate) async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    f: impl Fn() -> F,
) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 5 s"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The caller's team section of usage: its first day and its first budget.
async fn team_usage(app: &TestApp, token: &str) -> Value {
    let (status, _, usage) = app.get("/gateway/v1/usage", token).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    usage["team"].clone()
}

pub(crate) async fn created_id(app: &TestApp, token: &str) -> String {
    let (status, _, task) = app.create(token, &q2()).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    task["task_id"].as_str().unwrap().to_owned()
}

pub(crate) async fn task_record(app: &TestApp, id: &str) -> Value {
    let (status, _, list) = app
        .get("/gateway/v1/tasks?limit=500", &app.admin_token())
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("task {id} not listed: {list}"))
}

/// POSTs a callback for `body`, signed (or not) with `headers`.
pub(crate) async fn post_callback(
    app: &TestApp,
    headers: &[(&str, String)],
    body: &Value,
) -> (StatusCode, Value) {
    let mut req = app
        .client
        .post(format!("{}/gateway/v1/callbacks/vidu", app.url))
        .insert_header(("content-type", "application/json"));
    for (name, value) in headers {
        req = req.insert_header((*name, value.as_str()));
    }
    let mut res = req.send_body(body.to_string()).await.unwrap();
    let (status, _, v) = read(&mut res).await;
    (status, v)
}

/// The headers Vidu would sign a callback with, for the gateway's registered URL, at `date`.
pub(crate) fn vidu_signed(date: Timestamp, nonce: &str) -> Vec<(&'static str, String)> {
    let url = url::Url::parse(&format!("{PUBLIC}/gateway/v1/callbacks/vidu")).unwrap();
    signed_headers(VIDU_KEY.as_bytes(), &url, date, nonce)
}

pub(crate) fn with_callbacks(config: TestConfig) -> TestConfig {
    config.settings(|s| s.callbacks.public_base_url = PUBLIC.into())
}

/// Queries of task ids the mock received.
pub(crate) fn queries(mock: &MockVidu) -> Vec<String> {
    mock.received()
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/ent/v2/tasks/"))
        .map(|r| {
            r.path
                .trim_start_matches("/ent/v2/tasks/")
                .trim_end_matches("/creations")
                .to_owned()
        })
        .collect()
}

async fn a_failed_task_is_refunded_to_its_creation_day_and_unblocks_a_refused_request() {
    let mock = MockVidu::start().await;
    let states = living_vidu(&mock, 40);
    let app = with_callbacks(TestApp::builder(&mock))
        .toml("[policy.teams.video]\nteam_daily_credits = 60\n")
        .spawn()
        .await;
    let token = app.token("alice", "video");
    let id = created_id(&app, &token).await;
    let forwarded: Value = serde_json::from_slice(&mock.received()[0].body).unwrap();
    assert_eq!(
        forwarded["callback_url"],
        format!("{PUBLIC}/gateway/v1/callbacks/vidu"),
        "Vidu calls the gateway back"
    );
    let (status, _, refused) = app.create(&token, &q2()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert_eq!(refused["reason"], "CreditBudgetExhausted");

    // The task fails: its credits go back to the day it was created in.
    let created_day = team_usage(&app, &token).await["days"][0]["day"].clone();
    set_state(&states, &id, "failed", 0);
    let (status, answer) = post_callback(
        &app,
        &vidu_signed(app.clock.now(), "nonce-1"),
        &json!({"id": id, "state": "failed", "err_code": "X", "credits": 0}),
    )
    .await;
    assert_eq!((status, answer), (StatusCode::OK, json!({})));
    let day = eventually("the refund", || async {
        let day = team_usage(&app, &token).await["days"][0].clone();
        (day["credits_refunded"] == 40).then_some(day)
    })
    .await;
    assert_eq!(day["day"], created_day);
    assert_eq!(day["credits_settled"], 0, "{day}");
    let task = task_record(&app, &id).await;
    assert_eq!(
        (&task["state"], &task["charged"], &task["refunded"]),
        (&json!("failed"), &json!(0), &json!(40))
    );
    assert!(task["ended_at"].is_string(), "{task}");
    let (status, _, again) = app.create(&token, &q2()).await;
    assert_eq!(status, StatusCode::OK, "admitted after the refund: {again}");
    // This one fails after midnight: its refund still goes to the day it was created in.
    let late = again["task_id"].as_str().unwrap().to_owned();
    app.clock.advance(SignedDuration::from_hours(24));
    set_state(&states, &late, "failed", 0);
    let (status, _) = post_callback(
        &app,
        &vidu_signed(app.clock.now(), "nonce-2"),
        &json!({"id": late, "state": "failed"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let days = eventually("the second refund", || async {
        let days = team_usage(&app, &token).await["days"].clone();
        (days[0]["credits_refunded"] == 80).then_some(days)
    })
    .await;
    assert_eq!(days[0]["day"], created_day);
    assert_eq!(
        days.as_array().unwrap().len(),
        1,
        "nothing on the day it failed: {days}"
    );
    // The counters follow the store's answer (on the task that learned it).
    eventually("the metrics", || async {
        let metrics = app.metrics_text().await;
        (metrics.contains(r#"vidu_gateway_tasks_ended_total{state="failed",team="video"} 2"#)
            && metrics.contains(r#"vidu_gateway_credits_total{kind="refunded",team="video"} 80"#))
        .then_some(())
    })
    .await;
}

async fn a_success_charges_vidus_final_credits_and_a_cancel_refunds() {
    let mock = MockVidu::start().await;
    let states = living_vidu(&mock, 40);
    let app = TestApp::builder(&mock).spawn().await;
    let token = app.token("alice", "video");
    let done = created_id(&app, &token).await;
    let cancelled = created_id(&app, &token).await;
    set_state(&states, &done, "success", 30);
    // The caller's own query teaches the gateway the final figure.
    let (status, _, q) = app
        .get(&format!("/ent/v2/tasks/{done}/creations"), &token)
        .await;
    assert_eq!((status, q["credits"].clone()), (StatusCode::OK, json!(30)));
    let (status, _, _) = app
        .post(&format!("/ent/v2/tasks/{cancelled}/cancel"), &token, "{}")
        .await;
    assert_eq!(status, StatusCode::OK);
    let day = eventually("final credits and the cancel's refund", || async {
        let day = team_usage(&app, &token).await["days"][0].clone();
        (day["credits_settled"] == 30 && day["credits_refunded"] == 40).then_some(day)
    })
    .await;
    assert_eq!(day["admitted"], 2, "{day}");
    let totals = team_usage(&app, &token).await["totals"].clone();
    assert_eq!(
        (&totals["credits_settled"], &totals["credits_refunded"]),
        (&json!(30), &json!(40)),
        "settled equals the sum of Vidu's final credits (30 + 0)"
    );
    let t = task_record(&app, &cancelled).await;
    assert_eq!(
        (&t["state"], &t["refunded"]),
        (&json!("cancelled"), &json!(40))
    );
    // The `usage` command shows the same, from the ledger file or Redis.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, app.config.text()).unwrap();
    let (code, out, err) = run_cli(
        &[
            "usage",
            "--team",
            "video",
            "--format",
            "json",
            "--config",
            path.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let cli: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            &cli["team"]["totals"]["credits_settled"],
            &cli["team"]["totals"]["credits_refunded"]
        ),
        (&json!(30), &json!(40)),
        "{cli}"
    );
    let (code, table, _) = run_cli(
        &[
            "usage",
            "--team",
            "video",
            "--config",
            path.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert!(table.contains("refunded"), "{table}");
    let t = task_record(&app, &done).await;
    assert_eq!(
        (&t["state"], &t["charged"], &t["estimate"]),
        (&json!("success"), &json!(30), &json!(55))
    );
}

async fn bad_callbacks_are_refused_with_401_and_change_nothing() {
    let mock = MockVidu::start().await;
    let states = living_vidu(&mock, 40);
    let app = with_callbacks(TestApp::builder(&mock)).spawn().await;
    let token = app.token("alice", "video");
    let id = created_id(&app, &token).await;
    set_state(&states, &id, "failed", 0);
    let body = json!({"id": id, "state": "failed"});
    let now = app.clock.now();

    let mut tampered = vidu_signed(now, "n-tampered");
    for (name, value) in &mut tampered {
        if *name == "X-HMAC-SIGNATURE" {
            *value = "AAAA".to_owned() + &value[4..];
        }
    }
    let stale = vidu_signed(now - SignedDuration::from_mins(10), "n-stale");
    let no_nonce: Vec<_> = vidu_signed(now, "n-missing")
        .into_iter()
        .filter(|(n, _)| *n != "x-request-nonce")
        .collect();
    let mut wrong_algorithm = vidu_signed(now, "n-alg");
    for (name, value) in &mut wrong_algorithm {
        if *name == "X-HMAC-ALGORITHM" {
            *value = "hmac-sha1".into();
        }
    }
    let mut wrong_key = vidu_signed(now, "n-key");
    for (name, value) in &mut wrong_key {
        if *name == "X-HMAC-ACCESS-KEY" {
            *value = "someone".into();
        }
    }
    let other_secret = signed_headers(
        b"not-the-enterprise-key",
        &url::Url::parse(&format!("{PUBLIC}/gateway/v1/callbacks/vidu")).unwrap(),
        now,
        "n-other",
    );
    for (what, headers) in [
        ("tampered", tampered),
        ("Date 10 minutes old", stale),
        ("no nonce", no_nonce),
        ("wrong algorithm", wrong_algorithm),
        ("wrong access key", wrong_key),
        ("another key", other_secret),
    ] {
        let (status, answer) = post_callback(&app, &headers, &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {answer}");
        assert_eq!(answer["reason"], "Unauthorized", "{what}");
    }
    // A valid one, then the same delivery again: the replay is refused.
    let valid = vidu_signed(now, "n-once");
    assert_eq!(post_callback(&app, &valid, &body).await.0, StatusCode::OK);
    let (status, answer) = post_callback(&app, &valid, &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("nonce"),
        "{answer}"
    );
    // Only the valid callback made the gateway ask Vidu.
    eventually("the confirming query", || async {
        (queries(&mock).len() == 1).then_some(())
    })
    .await;
    actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        queries(&mock),
        std::slice::from_ref(&id),
        "no query for a callback that did not verify"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"vidu_gateway_callbacks_total{outcome="bad_signature"} 6"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"vidu_gateway_callbacks_total{outcome="replayed"} 1"#));
}

async fn a_callback_whose_body_lies_changes_only_what_the_query_confirms() {
    let mock = MockVidu::start().await;
    let states = living_vidu(&mock, 40);
    let app = with_callbacks(TestApp::builder(&mock)).spawn().await;
    let token = app.token("alice", "video");
    let id = created_id(&app, &token).await;
    set_state(&states, &id, "processing", 40);
    let lie = json!({"id": id, "state": "failed", "credits": 0});
    let (status, _) = post_callback(&app, &vidu_signed(app.clock.now(), "n-lie"), &lie).await;
    assert_eq!(status, StatusCode::OK);
    let task = eventually("the confirmed state", || async {
        let t = task_record(&app, &id).await;
        (t["state"] == "processing").then_some(t)
    })
    .await;
    assert_eq!(
        (&task["charged"], &task["refunded"]),
        (&json!(40), &json!(0))
    );
    assert_eq!(
        team_usage(&app, &token).await["totals"]["credits_refunded"],
        0
    );
}

async fn the_reconciler_ends_tasks_whose_callbacks_were_lost_within_its_rate() {
    let mock = MockVidu::start().await;
    let states = living_vidu(&mock, 40);
    let app = TestApp::builder(&mock)
        .settings(|s| {
            s.tasks.reconcile_interval_secs = 60;
            s.tasks.reconcile_max_per_minute = 3;
        })
        .spawn()
        .await;
    let token = app.token("alice", "video");
    let mut ids = Vec::new();
    // The first runs off-peak.
    let mut off_peak = q2();
    off_peak["off_peak"] = json!(true);
    let (status, _, task) = app.create(&token, &off_peak).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    ids.push(task["task_id"].as_str().unwrap().to_owned());
    app.clock.advance(SignedDuration::from_secs(1));
    for _ in 0..4 {
        ids.push(created_id(&app, &token).await);
        app.clock.advance(SignedDuration::from_secs(1));
    }
    // The off-peak task Vidu expired, and one that succeeded: no callback ever came (no public URL).
    set_state(&states, &ids[0], "expired", 0);
    set_state(&states, &ids[1], "success", 35);
    actix_web::rt::time::sleep(Duration::from_millis(400)).await;
    assert!(queries(&mock).is_empty(), "nothing is due yet");
    app.clock.advance(SignedDuration::from_secs(61));
    let asked = eventually("3 queries", || async {
        let q = queries(&mock);
        (q.len() >= 3).then_some(q)
    })
    .await;
    assert_eq!(asked, ids[..3], "oldest first");
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(queries(&mock).len(), 3, "at most 3 a minute");
    let t = task_record(&app, &ids[0]).await;
    assert_eq!(
        (&t["state"], &t["refunded"], &t["off_peak"]),
        (&json!("cancelled"), &json!(40), &json!(true))
    );
    let t = task_record(&app, &ids[1]).await;
    assert_eq!(
        (&t["state"], &t["charged"]),
        (&json!("success"), &json!(35))
    );
    // The next minute: the other two, then the ones still unfinished again.
    app.clock.advance(SignedDuration::from_secs(61));
    let asked = eventually("the next 3", || async {
        let q = queries(&mock);
        (q.len() >= 6).then_some(q)
    })
    .await;
    assert_eq!(asked[3..5], ids[3..5]);
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"vidu_gateway_reconcile_queries_total{outcome="ok"}"#),
        "{metrics}"
    );
}

/// Relays a team endpoint received: headers and body.
type Received = Arc<Mutex<Vec<(Vec<(String, String)>, Bytes)>>>;

/// A team endpoint that records every relay and answers `statuses` in turn (then 200).
struct TeamEndpoint {
    url: String,
    got: Received,
}

async fn team_endpoint(statuses: Vec<u16>, location: Option<String>) -> TeamEndpoint {
    let got: Received = Arc::default();
    let answers = Arc::new(Mutex::new(statuses));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://localhost:{}/hooks/vidu?team=video",
        listener.local_addr().unwrap().port()
    );
    let g = got.clone();
    let server = HttpServer::new(move || {
        let (g, answers, location) = (g.clone(), answers.clone(), location.clone());
        App::new().default_service(web::to(move |req: HttpRequest, body: Bytes| {
            let (g, answers, location) = (g.clone(), answers.clone(), location.clone());
            async move {
                let headers = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                    .collect();
                g.lock().unwrap().push((headers, body));
                let mut a = answers.lock().unwrap();
                let status = if a.is_empty() { 200 } else { a.remove(0) };
                let mut res = HttpResponse::build(StatusCode::from_u16(status).unwrap());
                if let Some(to) = location {
                    res.insert_header(("location", to));
                }
                res.finish()
            }
        }))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    actix_web::rt::spawn(server);
    TeamEndpoint { url, got }
}

async fn state_changes_are_relayed_to_the_callers_url_signed_with_the_team_secret_until_delivered()
{
    let mock = MockVidu::start().await;
    let states = living_vidu(&mock, 40);
    let endpoint = team_endpoint(vec![500, 503], None).await;
    let app = with_callbacks(TestApp::builder(&mock))
        .settings(|s| {
            s.callbacks.relay_hosts = vec![HostPattern::parse("localhost").unwrap()];
            s.callbacks.relay_backoff_ms = 50;
            s.callbacks.relay_backoff_max_ms = 100;
            s.callbacks.teams.insert(
                "video".into(),
                vidu_gateway::config::TeamCallbacks {
                    secret: vidu_gateway::config::Secret::new(RELAY_SECRET),
                    secret_file: None,
                },
            );
        })
        .spawn()
        .await;
    let token = app.token("alice", "video");
    let mut body = q2();
    body["callback_url"] = json!(endpoint.url);
    let (status, _, task) = app.create(&token, &body).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    let id = task["task_id"].as_str().unwrap().to_owned();
    let forwarded: Value = serde_json::from_slice(&mock.received()[0].body).unwrap();
    assert_ne!(
        forwarded["callback_url"],
        json!(endpoint.url),
        "the caller's URL never reaches Vidu"
    );

    set_state(&states, &id, "success", 40);
    post_callback(
        &app,
        &vidu_signed(app.clock.now(), "n-relay"),
        &json!({"id": id}),
    )
    .await;
    // Two failures, then delivered: three attempts of the one state change.
    // Backoff is measured on the gateway's (manual) clock: let it run.
    let got = eventually("the relay's third attempt", || async {
        app.clock.advance(SignedDuration::from_millis(50));
        let got = endpoint.got.lock().unwrap().clone();
        (got.len() >= 3).then_some(got)
    })
    .await;
    for _ in 0..6 {
        app.clock.advance(SignedDuration::from_millis(100));
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(endpoint.got.lock().unwrap().len(), 3, "none after the 2xx");
    let registered = url::Url::parse(&endpoint.url).unwrap();
    let mut nonces = Vec::new();
    for (headers, body) in &got {
        let lookup = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let verified = verify(
            RELAY_SECRET.as_bytes(),
            registered.path(),
            registered.query().unwrap_or(""),
            lookup,
            Timestamp::now(),
        );
        let verified = verified.unwrap_or_else(|e| panic!("the relay's signature: {e}"));
        nonces.push(verified.nonce);
        let relayed: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            (&relayed["id"], &relayed["state"]),
            (&json!(id), &json!("success"))
        );
        let everything = format!("{headers:?}{}", String::from_utf8_lossy(body));
        assert!(
            !everything.contains(VIDU_KEY),
            "the enterprise key in a relay"
        );
        assert_eq!(lookup("authorization"), None);
    }
    nonces.sort();
    nonces.dedup();
    assert_eq!(nonces.len(), 3, "a fresh nonce per attempt");
    let t = eventually("delivered on the task", || async {
        let t = task_record(&app, &id).await;
        (t["relay"] == "delivered").then_some(t)
    })
    .await;
    assert_eq!(t["callback_url"], json!(endpoint.url));
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"vidu_gateway_relays_total{outcome="retried"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"vidu_gateway_relays_total{outcome="delivered"} 1"#));
}

async fn a_callback_url_the_gateway_may_not_relay_to_is_refused_at_create() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock)
        .settings(|s| {
            s.callbacks.relay_hosts = vec![HostPattern::parse("*.corp.example").unwrap()];
            s.callbacks.teams.insert(
                "video".into(),
                vidu_gateway::config::TeamCallbacks {
                    secret: vidu_gateway::config::Secret::new(RELAY_SECRET),
                    secret_file: None,
                },
            );
        })
        .spawn()
        .await;
    let mut body = q2();
    body["callback_url"] = json!("https://evil.example/steal");
    let (status, _, answer) = app.create(&app.token("alice", "video"), &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["reason"], "FieldInvalid");
    let msg = answer["message"].as_str().unwrap();
    assert!(
        msg.contains("callback_url") && msg.contains("callbacks.relay_hosts"),
        "{msg}"
    );
    // The quote says the same.
    let (status, _, quote) = app
        .post(
            "/gateway/v1/img2video/quote",
            &app.token("alice", "video"),
            body.to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{quote}");
    assert_eq!(
        (&quote["valid"], &quote["reason"]),
        (&json!(false), &json!("FieldInvalid")),
        "{quote}"
    );
    // Allowed host, but the team has no secret.
    body["callback_url"] = json!("https://hooks.corp.example/cb");
    let (status, _, answer) = app.create(&app.token("bob", "design"), &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("callbacks.teams.design.secret"),
        "{answer}"
    );
    assert!(mock.received().is_empty(), "nothing forwarded");
    // Allowed, with a secret: relaying on without a public URL, Vidu gets no callback_url at all.
    let (status, _, answer) = app.create(&app.token("alice", "video"), &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let forwarded: Value = serde_json::from_slice(&mock.received()[0].body).unwrap();
    assert!(forwarded.get("callback_url").is_none(), "{forwarded}");
}

async fn tasks_are_listed_newest_first_for_their_owner_and_for_admins() {
    let mock = MockVidu::start().await;
    living_vidu(&mock, 40);
    let app = TestApp::builder(&mock).spawn().await;
    let (alice, bob) = (app.token("alice", "video"), app.token("bob", "design"));
    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(created_id(&app, &alice).await);
        app.clock.advance(SignedDuration::from_secs(1));
    }
    created_id(&app, &bob).await;
    let (status, _, page) = app.get("/gateway/v1/tasks?limit=2", &alice).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ids = |p: &Value| {
        p["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["task_id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&page), [mine[2].clone(), mine[1].clone()]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, _, next) = app
        .get(
            &format!("/gateway/v1/tasks?limit=2&cursor={cursor}"),
            &alice,
        )
        .await;
    assert_eq!(ids(&next), [mine[0].clone()]);
    assert!(next["next_cursor"].is_null());
    let first = &page["tasks"][0];
    for key in [
        "request_id",
        "user",
        "team",
        "model",
        "estimate",
        "charged",
        "refunded",
        "state",
        "created_at",
        "updated_at",
    ] {
        assert!(!first[key].is_null(), "{key} in {first}");
    }
    let (status, _, answer) = app.get("/gateway/v1/tasks?user=bob", &alice).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let (_, _, admin) = app
        .get("/gateway/v1/tasks?team=design", &app.admin_token())
        .await;
    assert_eq!(admin["tasks"].as_array().unwrap().len(), 1);
    let (_, _, created) = app.get("/gateway/v1/tasks?state=created", &alice).await;
    assert_eq!(created["tasks"].as_array().unwrap().len(), 3);
    for bad in ["state=done", "limit=0", "limit=501", "cursor=%%%"] {
        let (status, _, answer) = app.get(&format!("/gateway/v1/tasks?{bad}"), &alice).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
    }
}

async fn unknown_reservations_are_listed_settled_and_released_by_admins_and_released_after_the_configured_hours()
 {
    let mock = MockVidu::start().await;
    // Vidu never answers in time: each create ends unknown (the task may exist).
    mock.respond(|_| Reply::json(200, created_task("1", 40)).delayed(Duration::from_secs(5)));
    let app = TestApp::builder(&mock)
        .upstream(|u| u.request_timeout_ms = 300)
        .settings(|s| s.tasks.unknown_release_after_hours = 2)
        .spawn()
        .await;
    let token = app.token("alice", "video");
    for _ in 0..3 {
        let (status, _, answer) = app.create(&token, &q2()).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{answer}");
    }
    let admin = app.admin_token();
    let list = eventually("3 unknown reservations", || async {
        let (_, _, v) = app.get("/gateway/v1/reservations", &admin).await;
        let l = v["reservations"].as_array().cloned().unwrap_or_default();
        (l.len() == 3 && l.iter().all(|r| r["state"] == "unknown")).then_some(l)
    })
    .await;
    assert_eq!(
        (&list[0]["user"], &list[0]["estimate"]),
        (&json!("alice"), &json!(55))
    );
    let (status, _, answer) = app.get("/gateway/v1/reservations", &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let id = |i: usize| list[i]["id"].as_str().unwrap().to_owned();
    let (status, _, answer) = app
        .post(
            &format!("/gateway/v1/reservations/{}/settle", id(0)),
            &token,
            r#"{"credits": 30}"#,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let (status, _, answer) = app
        .post(
            &format!("/gateway/v1/reservations/{}/settle", id(0)),
            &admin,
            r#"{"credits": 30}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, _, answer) = app
        .post(
            &format!("/gateway/v1/reservations/{}/settle", id(0)),
            &admin,
            r#"{"credits": 30}"#,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "once: {answer}");
    let (status, _, answer) = app
        .post(
            &format!("/gateway/v1/reservations/{}/settle", id(1)),
            &admin,
            r#"{"credits": "x"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, _, _) = app
        .post(
            &format!("/gateway/v1/reservations/{}/release", id(1)),
            &admin,
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let day = team_usage(&app, &token).await["days"][0].clone();
    assert_eq!(
        (
            &day["credits_settled"],
            &day["credits_released"],
            &day["credits_unknown"]
        ),
        (&json!(30), &json!(55), &json!(55)),
        "{day}"
    );
    // The last one is released by itself once it is 2 hours old.
    app.clock.advance(SignedDuration::from_mins(121));
    eventually("the automatic release", || async {
        let (_, _, v) = app.get("/gateway/v1/reservations", &admin).await;
        v["reservations"]
            .as_array()
            .is_some_and(|l| l.is_empty())
            .then_some(())
    })
    .await;
    let day = team_usage(&app, &token).await["days"][0].clone();
    assert_eq!(
        (&day["credits_released"], &day["credits_unknown"]),
        (&json!(110), &json!(0)),
        "{day}"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("vidu_gateway_reservations_auto_released_total 1"),
        "{metrics}"
    );
    // Each resolution is in the audit trail: who, which reservation, how.
    let entries = eventually("three audit entries", || async {
        let (_, _, v) = app.get("/gateway/v1/audit", &admin).await;
        let l: Vec<Value> = v["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| {
                e["kind"]
                    .as_str()
                    .is_some_and(|k| k.starts_with("reservation_"))
            })
            .collect();
        (l.len() == 3).then_some(l)
    })
    .await;
    let seen: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["detail"]["id"].as_str().unwrap(),
            )
        })
        .collect();
    let last = list[2]["id"].as_str().unwrap();
    assert_eq!(
        seen,
        [
            ("reservation_auto_released", "gateway", last),
            ("reservation_released", "root", id(1).as_str()),
            ("reservation_settled", "root", id(0).as_str()),
        ]
    );
    assert_eq!(entries[2]["detail"]["credits"], 30);
}

/// A team endpoint that redirects is not followed, and a relay that keeps failing is given up after
/// `callbacks.relay_attempts`, with `failed` on the task.
async fn a_relay_follows_no_redirect_and_gives_up_after_its_attempts() {
    let mock = MockVidu::start().await;
    let states = living_vidu(&mock, 40);
    let elsewhere = team_endpoint(vec![], None).await;
    let endpoint = team_endpoint(vec![302, 302, 302], Some(elsewhere.url.clone())).await;
    let app = with_callbacks(TestApp::builder(&mock))
        .settings(|s| {
            s.callbacks.relay_hosts = vec![HostPattern::parse("localhost").unwrap()];
            s.callbacks.relay_attempts = 3;
            s.callbacks.relay_backoff_ms = 10;
            s.callbacks.relay_backoff_max_ms = 10;
            s.callbacks.relay_secret = vidu_gateway::config::Secret::new(RELAY_SECRET);
        })
        .spawn()
        .await;
    let token = app.token("alice", "video");
    let mut body = q2();
    body["callback_url"] = json!(endpoint.url);
    let (status, _, task) = app.create(&token, &body).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    let id = task["task_id"].as_str().unwrap().to_owned();
    set_state(&states, &id, "processing", 40);
    post_callback(
        &app,
        &vidu_signed(app.clock.now(), "n-redirect"),
        &json!({"id": id}),
    )
    .await;
    let t = eventually("the relay given up", || async {
        app.clock.advance(SignedDuration::from_millis(20));
        let t = task_record(&app, &id).await;
        (t["relay"] == "failed").then_some(t)
    })
    .await;
    assert_eq!(t["state"], "processing");
    assert_eq!(endpoint.got.lock().unwrap().len(), 3, "relay_attempts = 3");
    assert!(
        elsewhere.got.lock().unwrap().is_empty(),
        "no redirect followed"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"vidu_gateway_relays_total{outcome="gave_up"} 1"#),
        "{metrics}"
    );
}

/// Each relay attempt is cut off at `callbacks.relay_timeout_ms`: an endpoint that does not answer does not hold
/// the relay, which is given up after its attempts.
async fn a_relay_attempt_is_cut_off_at_the_relay_timeout() {
    let mock = MockVidu::start().await;
    let states = living_vidu(&mock, 40);
    let hits = Arc::new(AtomicU64::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://localhost:{}/slow",
        listener.local_addr().unwrap().port()
    );
    let h = hits.clone();
    let server = HttpServer::new(move || {
        let h = h.clone();
        App::new().default_service(web::to(move || {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                actix_web::rt::time::sleep(Duration::from_secs(10)).await;
                HttpResponse::Ok().finish()
            }
        }))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    actix_web::rt::spawn(server);
    let app = with_callbacks(TestApp::builder(&mock))
        .settings(|s| {
            s.callbacks.relay_hosts = vec![HostPattern::parse("localhost").unwrap()];
            s.callbacks.relay_attempts = 2;
            s.callbacks.relay_timeout_ms = 200;
            s.callbacks.relay_backoff_ms = 10;
            s.callbacks.relay_backoff_max_ms = 10;
            s.callbacks.relay_secret = vidu_gateway::config::Secret::new(RELAY_SECRET);
        })
        .spawn()
        .await;
    let token = app.token("alice", "video");
    let mut body = q2();
    body["callback_url"] = json!(url);
    let (status, _, task) = app.create(&token, &body).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    let id = task["task_id"].as_str().unwrap().to_owned();
    set_state(&states, &id, "processing", 40);
    let started = std::time::Instant::now();
    post_callback(
        &app,
        &vidu_signed(app.clock.now(), "n-slow"),
        &json!({"id": id}),
    )
    .await;
    eventually("the relay given up", || async {
        app.clock.advance(SignedDuration::from_millis(20));
        (task_record(&app, &id).await["relay"] == "failed").then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "two attempts of 200 ms, not of the endpoint's 10 s: {:?}",
        started.elapsed()
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

crate::on_both_backends!(
    a_failed_task_is_refunded_to_its_creation_day_and_unblocks_a_refused_request,
    a_success_charges_vidus_final_credits_and_a_cancel_refunds,
    bad_callbacks_are_refused_with_401_and_change_nothing,
    a_callback_whose_body_lies_changes_only_what_the_query_confirms,
    the_reconciler_ends_tasks_whose_callbacks_were_lost_within_its_rate,
    state_changes_are_relayed_to_the_callers_url_signed_with_the_team_secret_until_delivered,
    a_callback_url_the_gateway_may_not_relay_to_is_refused_at_create,
    tasks_are_listed_newest_first_for_their_owner_and_for_admins,
    unknown_reservations_are_listed_settled_and_released_by_admins_and_released_after_the_configured_hours,
    a_callback_whose_confirmation_failed_is_confirmed_by_the_reconciler,
    a_relay_follows_no_redirect_and_gives_up_after_its_attempts,
    a_relay_attempt_is_cut_off_at_the_relay_timeout,
);

mod replicas {
    use super::*;

    /// Two replicas on one Redis: one reconciler lease, one per-minute quota for both.
    async fn two_replicas_reconcile_within_one_quota() {
        let mock = MockVidu::start().await;
        living_vidu(&mock, 40);
        let config = TestApp::builder(&mock).settings(|s| {
            s.tasks.reconcile_interval_secs = 60;
            s.tasks.reconcile_max_per_minute = 3;
        });
        let start = Timestamp::now();
        let a = TestApp::spawn_on(config.clone(), start, true).await;
        let b = TestApp::spawn_on(config, start, true).await;
        let token = a.token("alice", "video");
        for _ in 0..6 {
            created_id(&a, &token).await;
        }
        for app in [&a, &b] {
            app.clock.advance(SignedDuration::from_secs(61));
        }
        eventually("3 queries", || async {
            (queries(&mock).len() >= 3).then_some(())
        })
        .await;
        actix_web::rt::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(
            queries(&mock).len(),
            3,
            "one quota for both replicas: {:?}",
            queries(&mock)
        );
    }

    /// A delivery replayed to the other replica is refused too: nonces are shared.
    async fn a_callback_replayed_to_another_replica_is_refused() {
        let mock = MockVidu::start().await;
        living_vidu(&mock, 40);
        let config = with_callbacks(TestApp::builder(&mock));
        let start = Timestamp::now();
        let a = TestApp::spawn_on(config.clone(), start, true).await;
        let b = TestApp::spawn_on(config, start, true).await;
        let id = created_id(&a, &a.token("alice", "video")).await;
        let headers = vidu_signed(a.clock.now(), "n-shared");
        let body = json!({"id": id, "state": "processing"});
        assert_eq!(post_callback(&a, &headers, &body).await.0, StatusCode::OK);
        let (status, answer) = post_callback(&b, &headers, &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    }

    crate::on_redis_backend!(
        two_replicas_reconcile_within_one_quota,
        a_callback_replayed_to_another_replica_is_refused
    );
}

/// A callback is not lost when its confirming query fails (or the replica that took it stops): it left the task
/// due, and the reconciler asks again — even with polling off.
async fn a_callback_whose_confirmation_failed_is_confirmed_by_the_reconciler() {
    let mock = MockVidu::start().await;
    let states = living_vidu(&mock, 40);
    let app = with_callbacks(TestApp::builder(&mock)).spawn().await;
    let token = app.token("alice", "video");
    let id = created_id(&app, &token).await;
    set_state(&states, &id, "failed", 0);
    // Vidu's query endpoint fails once.
    let failures = Arc::new(AtomicU64::new(1));
    let living = {
        let states = states.clone();
        move |r: &Recorded| {
            let path = r.path.clone();
            let id = path
                .trim_start_matches("/ent/v2/tasks/")
                .trim_end_matches("/creations")
                .to_owned();
            Reply::json(
                200,
                states
                    .lock()
                    .unwrap()
                    .get(&id)
                    .cloned()
                    .unwrap_or(Value::Null),
            )
        }
    };
    let f = failures.clone();
    mock.respond(move |r| {
        if f.fetch_sub(1, Ordering::SeqCst) == 1 {
            return Reply::json(500, json!({"reason": "InternalServiceFailure"}));
        }
        living(r)
    });
    let (status, _) = post_callback(
        &app,
        &vidu_signed(app.clock.now(), "n-retry"),
        &json!({"id": id}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The callback left the task due after a grace period: the reconciler asks once it has passed.
    let task = eventually("the reconciler's confirmation", || async {
        app.clock.advance(SignedDuration::from_secs(2));
        let t = task_record(&app, &id).await;
        (t["state"] == "failed").then_some(t)
    })
    .await;
    assert_eq!(task["refunded"], 40);
    assert_eq!(
        queries(&mock).len(),
        2,
        "the failed confirmation, then the reconciler's"
    );
}
