//! Large creates forwarded while they are checked: the bytes of the image go to Vidu as they arrive, the end of
//! the body only once validation and admission have passed. The safety property, for every way a create can be
//! stopped on the way (an invalid body, policy, each limit, an idempotency replay or reuse, a caller who hangs up
//! or stalls): Vidu saw the request start but never saw it whole, so nothing was created or charged. The mock
//! records every request whose head arrived, how much of its body did, and whether it ended.

use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::body::{Raw, RawResponse};
use crate::helpers::*;

/// A valid create of about 700 KB (a 1920×1080 PNG data URI): over the 256 KiB from which creates stream.
fn large(extra: Value) -> Vec<u8> {
    let png = crate::validation::png_with(1920, 1080, &vec![0x5A; 500_000]);
    large_with(&png, extra)
}

fn large_with(image: &[u8], extra: Value) -> Vec<u8> {
    let uri = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(image)
    );
    // The image in the middle: members before it and after it are both sent last.
    let mut v = json!({"model": "viduq2", "duration": 5});
    v["images"] = json!([uri]);
    v["prompt"] = json!("a cat on a \"red\" sofa, é");
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    serde_json::to_vec(&v).unwrap()
}

/// What the client does after the first part of the body.
enum Then {
    SendRest,
    HangUp,
    /// Sends nothing more, and waits for the answer.
    Stall,
}

/// A client on its own thread: sends the head and `body[..split]`, says so, waits to be told what next, then
/// reads the answer.
struct Client {
    sent_first: mpsc::Receiver<()>,
    go: mpsc::Sender<Then>,
    done: actix_web::rt::task::JoinHandle<Option<RawResponse>>,
}

impl Client {
    /// Waits (without blocking the runtime the gateway runs on) until the first part is written.
    async fn first_part_sent(&self) {
        until(|| self.sent_first.try_recv().is_ok()).await;
    }
}

fn client(port: u16, token: &str, key: Option<&str>, body: Vec<u8>, split: usize) -> Client {
    let (first_tx, sent_first) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<Then>();
    let (token, key) = (
        token.to_owned(),
        key.map(|k| ("Idempotency-Key", k.to_owned())),
    );
    let done = actix_web::rt::task::spawn_blocking(move || {
        let extra: Vec<(&str, &str)> = key.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let mut raw = Raw::post_with(port, "/ent/v2/img2video", &token, body.len(), &extra);
        // The gateway may answer (and close) before it has read everything: a failed write is not a failure.
        let _ = raw.send(&body[..split]);
        let _ = first_tx.send(());
        if split < body.len() {
            match go_rx.recv().unwrap_or(Then::HangUp) {
                Then::SendRest => {
                    let _ = raw.send(&body[split..]);
                }
                Then::HangUp => {
                    raw.hang_up();
                    return None;
                }
                Then::Stall => {}
            }
        }
        Some(raw.response(Duration::from_secs(20)))
    });
    Client {
        sent_first,
        go,
        done,
    }
}

/// Sends `body` whole and returns the answer.
async fn send(app: &TestApp, token: &str, key: Option<&str>, body: Vec<u8>) -> RawResponse {
    let len = body.len();
    let c = client(app.port, token, key, body, len);
    c.done.await.unwrap().unwrap()
}

fn creates(mock: &MockVidu) -> Vec<Recorded> {
    mock.received()
        .into_iter()
        .filter(|r| r.path == "/ent/v2/img2video")
        .collect()
}

/// The safety property after a stopped create: Vidu saw it start (it was being forwarded) and never saw it end.
async fn assert_started_and_cut(mock: &MockVidu, creates_before: usize) {
    let what = "the stopped create's request to Vidu to be cut";
    until(|| {
        let arrivals = mock.arrivals();
        let last = arrivals.last();
        last.is_some_and(|a| a.cut)
    })
    .await;
    let arrivals = mock.arrivals();
    let last = arrivals.last().unwrap();
    assert_eq!(last.path, "/ent/v2/img2video");
    assert!(!last.complete, "{what}: {last:?}");
    assert!(last.bytes > 0, "the create was being forwarded: {last:?}");
    assert!(
        last.bytes < last.content_length.unwrap(),
        "Vidu never received the whole body: {last:?}"
    );
    assert_eq!(
        creates(mock).len(),
        creates_before,
        "nothing reached Vidu whole"
    );
}

fn assert_refused(res: &RawResponse, status: u16, reason: &str) {
    assert_eq!(res.status, status, "{}", res.body);
    assert_eq!(res.body["reason"], reason, "{}", res.body);
    assert_eq!(res.body["metadata"]["source"], "gateway", "{}", res.body);
}

#[actix_web::test]
async fn a_large_create_reaches_vidu_while_its_body_is_still_arriving_and_ends_once_admitted() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let body = large(json!({"seed": 7}));
    assert!(
        body.starts_with(b"{\"duration\":5,\"images\":"),
        "the image follows a first part"
    );
    let sent: Value = serde_json::from_slice(&body).unwrap();
    let c = client(
        app.port,
        &app.token("alice", "video"),
        None,
        body.clone(),
        body.len() / 2,
    );
    c.first_part_sent().await;
    // Half the body is in: Vidu already has bytes of it, and not the whole.
    until(|| mock.arrivals().iter().any(|a| a.bytes > 0)).await;
    let arrival = &mock.arrivals()[0];
    assert!(
        !arrival.complete && arrival.bytes <= body.len() / 2,
        "{arrival:?}"
    );
    assert!(creates(&mock).is_empty());
    c.go.send(Then::SendRest).unwrap();
    let res = c.done.await.unwrap().unwrap();
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.body["task_id"], "800000000000001");
    assert!(res.headers.iter().any(|(k, _)| k == "x-credits-estimated"));
    let got = creates(&mock);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].body == body,
        "the caller's bytes reached Vidu as they were"
    );
    assert_eq!(
        got[0].header("content-length").unwrap(),
        body.len().to_string()
    );
    let forwarded: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(forwarded, sent);
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("Token {VIDU_KEY}").as_str())
    );
    let arrival = &mock.arrivals()[0];
    assert!(arrival.complete && !arrival.cut);
}

#[actix_web::test]
async fn a_create_the_gateway_changes_reaches_vidu_changed_and_padded_to_its_declared_length() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock)
        .toml("[validation]\nunknown_fields = \"strip\"\n[policy.defaults]\noff_peak = \"force\"\n")
        .spawn()
        .await;
    let body = large(json!({"not_a_vidu_field": [1, 2, 3]}));
    let res = send(&app, &app.token("alice", "video"), None, body.clone()).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let got = creates(&mock);
    let forwarded: Value = serde_json::from_slice(&got[0].body).unwrap();
    let mut expected: Value = serde_json::from_slice(&body).unwrap();
    expected.as_object_mut().unwrap().remove("not_a_vidu_field");
    expected["off_peak"] = json!(true);
    assert_eq!(forwarded, expected);
    let end = got[0].body.trim_ascii_end();
    assert!(
        end.ends_with(b"\"off_peak\":true}") && end.len() < got[0].body.len(),
        "shorter than declared (a field stripped): spaces after its end"
    );
    assert_eq!(
        got[0].header("content-length").unwrap(),
        (body.len() + ",\"off_peak\":true".len()).to_string(),
        "declared with room for the off_peak the policy may add"
    );
}

#[actix_web::test]
async fn a_create_whose_first_part_holds_a_field_the_gateway_changes_is_read_whole_first() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock)
        .toml("[validation]\nunknown_fields = \"strip\"\n")
        .spawn()
        .await;
    // "aaa_unknown" sorts before "images": it would have gone out before the checks could strip it.
    let body = large(json!({"aaa_unknown": true}));
    let c = client(
        app.port,
        &app.token("alice", "video"),
        None,
        body.clone(),
        body.len() / 2,
    );
    c.first_part_sent().await;
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    assert!(
        mock.arrivals().is_empty(),
        "nothing goes out before the whole body is in"
    );
    c.go.send(Then::SendRest).unwrap();
    let res = c.done.await.unwrap().unwrap();
    assert_eq!(res.status, 200, "{}", res.body);
    let forwarded: Value = serde_json::from_slice(&creates(&mock)[0].body).unwrap();
    let mut expected: Value = serde_json::from_slice(&body).unwrap();
    expected.as_object_mut().unwrap().remove("aaa_unknown");
    assert_eq!(forwarded, expected);
}

async fn an_invalid_image_is_refused_and_never_reaches_vidu_whole() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let wide = crate::validation::png_with(5000, 1000, &vec![0x5A; 500_000]);
    let res = send(
        &app,
        &app.token("alice", "video"),
        None,
        large_with(&wide, json!({})),
    )
    .await;
    assert_eq!(res.status, 400, "{}", res.body);
    assert!(
        res.body["message"]
            .as_str()
            .unwrap()
            .contains("aspect ratio"),
        "{}",
        res.body
    );
    assert_started_and_cut(&mock, 0).await;
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("upstream_requests_total{endpoint=\"img2video\",outcome=\"aborted\"} 1"),
        "{metrics}"
    );
}

async fn an_invalid_field_after_the_image_is_refused_and_never_reaches_vidu_whole() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let res = send(
        &app,
        &app.token("alice", "video"),
        None,
        large(json!({"duration": 99})),
    )
    .await;
    assert_eq!(res.status, 400, "{}", res.body);
    assert_started_and_cut(&mock, 0).await;
}

async fn a_body_that_is_not_json_inside_the_image_is_refused_and_never_reaches_vidu_whole() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let mut body = large(json!({}));
    let at = body.len() / 2;
    body[at] = 0x01; // a control character inside the image string
    let res = send(&app, &app.token("alice", "video"), None, body).await;
    assert_refused(&res, 400, "BadRequest");
    assert_started_and_cut(&mock, 0).await;
}

async fn a_policy_refusal_never_reaches_vidu_whole() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock)
        .toml("[policy.teams.rt]\noff_peak = \"forbid\"\n")
        .spawn()
        .await;
    let res = send(
        &app,
        &app.token("a", "rt"),
        None,
        large(json!({"off_peak": true})),
    )
    .await;
    assert_refused(&res, 403, "Forbidden");
    assert_started_and_cut(&mock, 0).await;
}

/// Under `policy`, a first large create passes and the same again is refused: its answer, once Vidu is seen to
/// have had the start of the second request and never its end.
async fn the_second_is_refused(policy: &str) -> RawResponse {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).toml(policy).spawn().await;
    let token = app.token("alice", "video");
    assert_eq!(send(&app, &token, None, large(json!({}))).await.status, 200);
    let res = send(&app, &token, None, large(json!({}))).await;
    assert_started_and_cut(&mock, 1).await;
    res
}

async fn a_rate_limited_create_never_reaches_vidu_whole() {
    let res =
        the_second_is_refused("[policy.defaults]\nrequests_per_minute = 1\nburst = 1\n").await;
    assert_refused(&res, 429, "TooManyRequests");
}

async fn a_create_over_budget_never_reaches_vidu_whole() {
    let res = the_second_is_refused("[policy.defaults]\ndaily_credits = 60\n").await;
    assert_refused(&res, 429, "CreditBudgetExhausted");
    let message = res.body["message"].as_str().unwrap();
    assert!(
        message.contains("policy.defaults.daily_credits"),
        "{message}"
    );
}

async fn a_create_over_the_running_task_cap_never_reaches_vidu_whole() {
    let res = the_second_is_refused("[policy.defaults]\nmax_running_tasks = 1\n").await;
    assert_refused(&res, 429, "RunningTasksLimited");
}

async fn a_replayed_idempotent_create_never_reaches_vidu_twice() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let token = app.token("alice", "video");
    let body = large(json!({}));
    let first = send(&app, &token, Some("k-1"), body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let again = send(&app, &token, Some("k-1"), body).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body, first.body);
    assert_eq!(header(&again.headers, "idempotent-replayed"), Some("true"));
    assert_started_and_cut(&mock, 1).await;
    let reused = send(&app, &token, Some("k-1"), large(json!({"seed": 1}))).await;
    assert_refused(&reused, 422, "IdempotencyKeyReused");
    assert_started_and_cut(&mock, 1).await;
}

async fn a_caller_hanging_up_mid_body_leaves_vidu_an_unfinished_request() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock)
        .toml("[policy.defaults]\ndaily_credits = 1000\nmax_in_flight = 1\n")
        .spawn()
        .await;
    let token = app.token("alice", "video");
    let body = large(json!({}));
    let c = client(app.port, &token, None, body.clone(), body.len() / 2);
    c.first_part_sent().await;
    until(|| mock.arrivals().iter().any(|a| a.bytes > 0)).await;
    c.go.send(Then::HangUp).unwrap();
    assert!(c.done.await.unwrap().is_none());
    assert_started_and_cut(&mock, 0).await;
    // Nothing was taken: the in-flight slot is free and nothing is reserved.
    let res = send(&app, &token, None, body).await;
    assert_eq!(res.status, 200, "{}", res.body);
    // One create settled (the mock charges 25), none released: the hung-up one reserved nothing.
    crate::lifecycle::eventually("the second create settled", || async {
        let (_, _, usage) = app.get("/gateway/v1/usage", &token).await;
        let totals = &usage["user"]["totals"];
        (totals["credits_settled"] == 25)
            .then(|| assert_eq!(totals["credits_released"], 0, "{usage}"))
    })
    .await;
}

async fn a_caller_stalling_mid_body_gets_408_and_vidu_an_unfinished_request() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock)
        .server(|s| s.body_read_timeout_ms = 1000)
        .spawn()
        .await;
    let body = large(json!({}));
    let c = client(
        app.port,
        &app.token("alice", "video"),
        None,
        body.clone(),
        body.len() / 2,
    );
    c.first_part_sent().await;
    // Never sends the rest: the body guard cuts the create off.
    c.go.send(Then::Stall).unwrap();
    let res = c.done.await.unwrap().unwrap();
    assert_refused(&res, 408, "RequestTimeout");
    assert_started_and_cut(&mock, 0).await;
}

crate::on_both_backends!(
    an_invalid_image_is_refused_and_never_reaches_vidu_whole,
    an_invalid_field_after_the_image_is_refused_and_never_reaches_vidu_whole,
    a_body_that_is_not_json_inside_the_image_is_refused_and_never_reaches_vidu_whole,
    a_policy_refusal_never_reaches_vidu_whole,
    a_rate_limited_create_never_reaches_vidu_whole,
    a_create_over_budget_never_reaches_vidu_whole,
    a_create_over_the_running_task_cap_never_reaches_vidu_whole,
    a_replayed_idempotent_create_never_reaches_vidu_twice,
    a_caller_hanging_up_mid_body_leaves_vidu_an_unfinished_request,
    a_caller_stalling_mid_body_gets_408_and_vidu_an_unfinished_request,
);

/// A streamed create that failed before Vidu had its last byte: 502 saying nothing was created, and its
/// reservation released (not kept as unknown).
async fn assert_nothing_created_and_released(app: &TestApp, token: &str, res: &RawResponse) {
    assert_refused(res, 502, "UpstreamUnavailable");
    let message = res.body["message"].as_str().unwrap();
    assert!(message.contains("nothing was created"), "{message}");
    crate::lifecycle::eventually("the reservation released", || async {
        let (_, _, usage) = app.get("/gateway/v1/usage", token).await;
        let totals = &usage["user"]["totals"];
        (totals["credits_released"] == 55)
            .then(|| assert_eq!(totals["credits_unknown"], 0, "{usage}"))
    })
    .await;
}

#[actix_web::test]
async fn a_large_create_to_an_unreachable_vidu_is_502_nothing_created_and_released() {
    let port = closed_port();
    let app = TestConfig::new(&format!("http://127.0.0.1:{port}"))
        .spawn()
        .await;
    let token = app.token("alice", "video");
    let res = send(&app, &token, None, large(json!({}))).await;
    assert_nothing_created_and_released(&app, &token, &res).await;
}

#[actix_web::test]
async fn vidu_is_given_request_timeout_ms_from_the_last_byte_then_504_and_kept_unknown() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock)
        .upstream(|u| u.request_timeout_ms = 300)
        .spawn()
        .await;
    let token = app.token("alice", "video");
    // An upload slower than the timeout: the time is counted from the last byte, not from the first.
    let body = large(json!({}));
    let c = client(app.port, &token, None, body.clone(), body.len() / 2);
    c.first_part_sent().await;
    actix_web::rt::time::sleep(Duration::from_millis(600)).await;
    c.go.send(Then::SendRest).unwrap();
    let res = c.done.await.unwrap().unwrap();
    assert_eq!(res.status, 200, "{}", res.body);
    mock.respond(|_| Reply::json(200, created_task("1", 1)).delayed(Duration::from_millis(1500)));
    let res = send(&app, &token, None, large(json!({}))).await;
    assert_refused(&res, 504, "UpstreamTimeout");
    assert!(mock.arrivals()[1].complete, "the whole body reached Vidu");
    crate::lifecycle::eventually("the reservation kept as unknown", || async {
        let (_, _, usage) = app.get("/gateway/v1/usage", &token).await;
        (usage["user"]["totals"]["credits_unknown"] == 55).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn a_vidu_that_closes_the_connection_mid_body_created_nothing_and_the_create_is_released() {
    // A Vidu that reads 100 KB of the request, then closes: it never had the whole body. (For a whole body the
    // same close after sending means "the task may exist"; before the last byte it cannot.)
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let closer = actix_web::rt::task::spawn_blocking(move || {
        use std::io::Read;
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 100_000];
        let mut read = 0;
        while read < buf.len() {
            match conn.read(&mut buf[read..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
        read
    });
    let app = TestConfig::new(&format!("http://127.0.0.1:{port}"))
        .spawn()
        .await;
    let token = app.token("alice", "video");
    let res = send(&app, &token, None, large(json!({}))).await;
    assert!(
        closer.await.unwrap() > 0,
        "Vidu had the start of the request"
    );
    assert_nothing_created_and_released(&app, &token, &res).await;
}
