//! `Idempotency-Key` on creates, black-box on both backends against the recording mock Vidu: a retry with the same
//! key and body gets the first answer back byte for byte (`Idempotent-Replayed: true`) without reaching Vidu or
//! being charged; another body is 422, a retry while the first runs 409; a request refused before forwarding
//! (validation, admission, Vidu unreachable) leaves the key free; a timeout's 504 is kept; malformed keys are 400.
//! On Redis: 20 concurrent creates with one key across two replicas reach Vidu once; an unreachable Redis refuses
//! (`fail_closed`) or lets the create go on without its key (`fail_open`).

use std::net::TcpListener;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::HeaderValue;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::helpers::*;

/// An answer as the caller got it: the body's bytes as well as its JSON.
struct Got {
    status: StatusCode,
    headers: Vec<(String, String)>,
    raw: Bytes,
    json: Value,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }
}

/// `POST /ent/v2/img2video` with `body`, the `Idempotency-Key` values in `keys` (raw bytes) and `X-Request-Id`.
async fn create_keyed(
    app: &TestApp,
    token: &str,
    keys: &[&[u8]],
    request_id: &str,
    body: &Value,
) -> Got {
    post_keyed(app, "/ent/v2/img2video", token, keys, request_id, body).await
}

async fn post_keyed(
    app: &TestApp,
    path: &str,
    token: &str,
    keys: &[&[u8]],
    request_id: &str,
    body: &Value,
) -> Got {
    let mut req = app
        .client
        .post(format!("{}{path}", app.url))
        .insert_header(("authorization", format!("Bearer {token}")))
        .insert_header(("content-type", "application/json"))
        .insert_header(("x-request-id", request_id));
    for key in keys {
        req = req.append_header(("idempotency-key", HeaderValue::from_bytes(key).unwrap()));
    }
    let mut res = req.send_body(body.to_string()).await.unwrap();
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let raw = res.body().await.unwrap();
    Got {
        status: res.status(),
        headers,
        json: serde_json::from_slice(&raw).unwrap_or(Value::Null),
        raw,
    }
}

async fn create(app: &TestApp, token: &str, key: &str, request_id: &str, body: &Value) -> Got {
    create_keyed(app, token, &[key.as_bytes()], request_id, body).await
}

fn creates(mock: &MockVidu) -> usize {
    mock.received()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/ent/v2/img2video")
        .count()
}

fn other_body() -> Value {
    let mut b = small_request();
    b["duration"] = json!(4);
    b
}

/// The caller's usage totals, once the settlement of what was admitted has landed.
async fn settled_totals(app: &TestApp, token: &str, credits: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, usage) = app.get("/gateway/v1/usage", token).await;
        assert_eq!(status, StatusCode::OK, "{usage}");
        let totals = usage["user"]["totals"].clone();
        if totals["credits_settled"] == credits {
            return totals;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not settled to {credits}: {usage}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_retry_with_the_same_key_and_body_gets_the_first_answer_back() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock)
        .toml("[policy.defaults]\nrequests_per_minute = 20\ndaily_credits = 1000\n")
        .spawn()
        .await;
    let alice = app.token("alice", "mkt");
    let first = create(&app, &alice, "order-4711", "req-first", &small_request()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.json);
    assert!(!first.replayed());
    let again = create(&app, &alice, "order-4711", "req-again", &small_request()).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.json);
    assert!(again.replayed(), "{:?}", again.headers);
    assert_eq!(again.raw, first.raw, "the body, byte for byte");
    assert_eq!(again.header("x-request-id"), Some("req-again"));
    for name in [
        "content-type",
        "x-credits-estimated",
        "x-credits-remaining",
        "ratelimit-policy",
        "ratelimit",
    ] {
        assert!(first.header(name).is_some(), "{name} on the first answer");
        assert_eq!(again.header(name), first.header(name), "{name}");
    }
    assert_eq!(creates(&mock), 1, "the retry did not reach Vidu");
    let totals = settled_totals(&app, &alice, 25).await;
    assert_eq!(totals["admitted"], 1, "one admission, one charge: {totals}");
    // No rate token either: of the burst of 20, the first and this third create took one each.
    let third = create(&app, &alice, "order-4712", "req-third", &small_request()).await;
    assert_eq!(third.header("ratelimit"), Some("\"user\";r=18;t=0"));
    // Without the header nothing changes: each create is forwarded.
    let (status, _, _) = app.create(&alice, &small_request()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(creates(&mock), 3);
    let metrics = app.metrics_text().await;
    for line in [
        "vidu_gateway_idempotency_total{outcome=\"claimed\"} 2",
        "vidu_gateway_idempotency_total{outcome=\"replayed\"} 1",
        "vidu_gateway_idempotency_total{outcome=\"stored\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

async fn the_same_key_with_another_body_is_422_and_keys_belong_to_their_user() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let alice = app.token("alice", "mkt");
    let first = create(&app, &alice, "k-1", "r1", &small_request()).await;
    assert_eq!(first.status, StatusCode::OK);
    let other = create(&app, &alice, "k-1", "r2", &other_body()).await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.json
    );
    assert_envelope(
        other.status,
        &other.headers,
        &other.json,
        "IdempotencyKeyReused",
    );
    let message = other.json["message"].as_str().unwrap();
    assert!(
        message.contains("different request body") && message.contains("new key"),
        "{message}"
    );
    // Bob's key of the same name is his own.
    let bob = create(&app, &app.token("bob", "mkt"), "k-1", "r3", &other_body()).await;
    assert_eq!(bob.status, StatusCode::OK, "{}", bob.json);
    assert!(!bob.replayed());
    assert_eq!(creates(&mock), 2);
}

async fn a_retry_while_the_first_runs_is_409_with_retry_after() {
    let mock = MockVidu::start().await;
    mock.respond(|_| {
        Reply::json(200, created_task("800000000000009", 25)).delayed(Duration::from_millis(1500))
    });
    let app = TestApp::builder(&mock).spawn().await;
    let alice = app.token("alice", "mkt");
    let body = small_request();
    let first = create(&app, &alice, "slow-1", "r1", &body);
    let meanwhile = async {
        until(|| creates(&mock) == 1).await;
        let busy = create(&app, &alice, "slow-1", "r2", &small_request()).await;
        assert_eq!(busy.status, StatusCode::CONFLICT, "{}", busy.json);
        assert_envelope(
            busy.status,
            &busy.headers,
            &busy.json,
            "IdempotencyKeyInFlight",
        );
        assert_eq!(busy.header("retry-after"), Some("1"));
        assert!(
            busy.json["message"]
                .as_str()
                .unwrap()
                .contains("still being processed"),
            "{}",
            busy.json
        );
        // Another body while it runs is a reuse, not a wait.
        let reused = create(&app, &alice, "slow-1", "r3", &other_body()).await;
        assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    };
    let (first, ()) = futures_util::future::join(first, meanwhile).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(!first.replayed());
    let after = create(&app, &alice, "slow-1", "r4", &small_request()).await;
    assert_eq!(after.status, StatusCode::OK);
    assert!(after.replayed());
    assert_eq!(after.raw, first.raw);
    assert_eq!(creates(&mock), 1);
}

async fn malformed_keys_are_400_naming_the_header_and_the_quote_ignores_the_header() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let alice = app.token("alice", "mkt");
    let long = "k".repeat(256);
    let malformed: [&[&[u8]]; 5] = [
        &[b""],
        &[long.as_bytes()],
        &[b"has space"],
        &["clé".as_bytes()],
        &[b"one", b"two"],
    ];
    for keys in malformed {
        let got = create_keyed(&app, &alice, keys, "r", &small_request()).await;
        assert_eq!(
            got.status,
            StatusCode::BAD_REQUEST,
            "{keys:?}: {}",
            got.json
        );
        assert_envelope(got.status, &got.headers, &got.json, "BadRequest");
        let message = got.json["message"].as_str().unwrap();
        assert!(
            message.contains("Idempotency-Key") && message.contains("1 to 255 visible ASCII"),
            "{message}"
        );
    }
    assert_eq!(creates(&mock), 0);
    let longest = "k".repeat(255);
    let ok = create(&app, &alice, &longest, "r", &small_request()).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.json);
    // The quote is a dry run: it neither reads nor takes a key.
    let quote = post_keyed(
        &app,
        "/gateway/v1/img2video/quote",
        &alice,
        &[b"has space"],
        "r",
        &small_request(),
    )
    .await;
    assert_eq!(quote.status, StatusCode::OK);
    let quote = quote.json;
    assert_eq!(quote["valid"], true, "{quote}");
}

async fn a_request_refused_before_forwarding_leaves_its_key_free() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock)
        .toml("[policy.users.bob]\ndaily_credits = 10\n")
        .spawn()
        .await;
    let alice = app.token("alice", "mkt");
    let mut invalid = small_request();
    invalid["duration"] = json!(99);
    let refused = create(&app, &alice, "fix-me", "r1", &invalid).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.json);
    assert_eq!(refused.json["reason"], "FieldInvalid");
    // The caller fixes the body and retries with the same key: forwarded, once.
    let fixed = create(&app, &alice, "fix-me", "r2", &small_request()).await;
    assert_eq!(fixed.status, StatusCode::OK, "{}", fixed.json);
    assert!(!fixed.replayed());
    let again = create(&app, &alice, "fix-me", "r3", &small_request()).await;
    assert!(again.replayed());
    assert_eq!(creates(&mock), 1);
    // Refused by admission: nothing is stored either, any body may follow with the key.
    let bob = app.token("bob", "mkt");
    let over = create(&app, &bob, "budget", "r4", &small_request()).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS, "{}", over.json);
    let other = create(&app, &bob, "budget", "r5", &other_body()).await;
    assert_eq!(
        other.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        other.json
    );
    assert_eq!(other.json["reason"], "CreditBudgetExhausted");
    assert_eq!(creates(&mock), 1);
}

async fn a_timeout_after_sending_is_kept_and_a_retry_gets_the_504_without_a_second_task() {
    let mock = MockVidu::start().await;
    mock.respond(|_| {
        Reply::json(200, created_task("800000000000010", 25)).delayed(Duration::from_millis(1500))
    });
    let app = TestApp::builder(&mock)
        .upstream(|u| u.request_timeout_ms = 300)
        .spawn()
        .await;
    let alice = app.token("alice", "mkt");
    let first = create(&app, &alice, "slow", "req-timed-out", &small_request()).await;
    assert_eq!(first.status, StatusCode::GATEWAY_TIMEOUT, "{}", first.json);
    assert_envelope(first.status, &first.headers, &first.json, "UpstreamTimeout");
    let retry = create(&app, &alice, "slow", "req-retry", &small_request()).await;
    assert_eq!(retry.status, StatusCode::GATEWAY_TIMEOUT, "{}", retry.json);
    assert!(retry.replayed());
    assert_eq!(retry.raw, first.raw, "the first 504, byte for byte");
    assert_eq!(
        retry.json["metadata"]["trace_id"], "req-timed-out",
        "the first request's trace id"
    );
    assert_eq!(retry.header("x-request-id"), Some("req-retry"));
    assert_eq!(
        retry.header("x-credits-estimated"),
        first.header("x-credits-estimated")
    );
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(creates(&mock), 1, "no second task");
}

async fn vidu_unreachable_before_sending_leaves_the_key_free() {
    // A port nothing listens on (yet): the connection is refused before a byte is sent.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let app = TestConfig::new(&format!("http://{addr}")).spawn().await;
    let alice = app.token("alice", "mkt");
    let first = create(&app, &alice, "unreachable", "r1", &small_request()).await;
    assert_eq!(first.status, StatusCode::BAD_GATEWAY, "{}", first.json);
    assert!(
        first.json["message"]
            .as_str()
            .unwrap()
            .contains("nothing was created"),
        "{}",
        first.json
    );
    // Vidu is back: the retry with the same key is forwarded.
    let mock = MockVidu::start_on(TcpListener::bind(addr).unwrap()).await;
    let retry = create(&app, &alice, "unreachable", "r2", &small_request()).await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.json);
    assert!(!retry.replayed());
    assert_eq!(creates(&mock), 1);
}

crate::on_both_backends!(
    a_retry_with_the_same_key_and_body_gets_the_first_answer_back,
    the_same_key_with_another_body_is_422_and_keys_belong_to_their_user,
    a_retry_while_the_first_runs_is_409_with_retry_after,
    malformed_keys_are_400_naming_the_header_and_the_quote_ignores_the_header,
    a_request_refused_before_forwarding_leaves_its_key_free,
    a_timeout_after_sending_is_kept_and_a_retry_gets_the_504_without_a_second_task,
    vidu_unreachable_before_sending_leaves_the_key_free,
);

mod replicas {
    use jiff::Timestamp;

    use super::*;

    /// The issue's demonstration: 20 concurrent creates with one key and body, spread over two replicas on one
    /// Redis → exactly one reaches Vidu; every other gets 409 or the first answer replayed; one charge.
    async fn twenty_concurrent_creates_with_one_key_across_two_replicas_reach_vidu_once() {
        let mock = MockVidu::start().await;
        mock.respond(|_| {
            Reply::json(200, created_task("800000000000020", 25))
                .delayed(Duration::from_millis(500))
        });
        let config = TestApp::builder(&mock);
        let start = Timestamp::now();
        let a = TestApp::spawn_on(config.clone(), start, false).await;
        let b = TestApp::spawn_on(config, start, false).await;
        let alice = a.token("alice", "mkt");
        let sent = (0..20).map(|i| {
            let app = if i % 2 == 0 { &a } else { &b };
            let alice = alice.clone();
            async move { create(app, &alice, "once", &format!("r{i}"), &small_request()).await }
        });
        let answers = futures_util::future::join_all(sent).await;
        let first: Vec<&Got> = answers
            .iter()
            .filter(|g| g.status == StatusCode::OK && !g.replayed())
            .collect();
        assert_eq!(first.len(), 1, "exactly one create went on");
        for got in &answers {
            match got.status {
                StatusCode::OK => assert_eq!(got.raw, first[0].raw),
                StatusCode::CONFLICT => assert_eq!(got.json["reason"], "IdempotencyKeyInFlight"),
                other => panic!("{other}: {}", got.json),
            }
        }
        assert_eq!(creates(&mock), 1, "Vidu saw one create");
        let totals = settled_totals(&a, &alice, 25).await;
        assert_eq!(totals["admitted"], 1, "{totals}");
        // After the first answer, either replica replays it.
        for app in [&a, &b] {
            let again = create(app, &alice, "once", "late", &small_request()).await;
            assert!(again.replayed());
            assert_eq!(again.raw, first[0].raw);
        }
    }

    /// Redis unreachable: `fail_closed` refuses a create with a key (503, nothing forwarded); `fail_open` lets it
    /// go on without its key (never refused for it), and counts it.
    async fn an_unreachable_redis_refuses_under_fail_closed_and_goes_on_without_the_key_under_fail_open()
     {
        let mock = MockVidu::start().await;
        let config = TestApp::builder(&mock).state(|s| s.redis_timeout_ms = 100);
        let closed = config.clone().spawn().await;
        let open = config
            .state(|s| {
                s.on_unavailable = vidu_gateway::config::OnUnavailable::FailOpen;
                // A spool of its own: the other replica has one at the default path.
                s.spool_path = s.spool_path.with_file_name("spool-fail-open.sqlite3");
            })
            .spawn()
            .await;
        let alice = closed.token("alice", "mkt");
        current_redis().pause();
        let refused = create(&closed, &alice, "k", "r1", &small_request()).await;
        assert_eq!(
            refused.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            refused.json
        );
        assert_eq!(refused.json["reason"], "ServiceUnavailable");
        assert!(refused.header("retry-after").is_some());
        assert_eq!(creates(&mock), 0);
        let went_on = create(&open, &alice, "k", "r2", &small_request()).await;
        assert_eq!(went_on.status, StatusCode::OK, "{}", went_on.json);
        assert!(!went_on.replayed());
        current_redis().resume();
        assert_eq!(creates(&mock), 1);
        assert!(
            open.metrics_text()
                .await
                .contains("vidu_gateway_idempotency_total{outcome=\"unavailable\"} 1")
        );
    }

    crate::on_redis_backend!(
        twenty_concurrent_creates_with_one_key_across_two_replicas_reach_vidu_once,
        an_unreachable_redis_refuses_under_fail_closed_and_goes_on_without_the_key_under_fail_open,
    );
}
