//! The sandbox upstream behaves like Vidu: create → query (created, processing, success) → cancel, 404s; `[fail]`
//! prompts fail, off-peak tasks expire, and state changes are posted to the `callback_url`, signed.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use jiff::SignedDuration;
use serde_json::{Value, json};

use vidu_gateway::callbacks::signature;
use vidu_gateway::clock::Clock;
use vidu_gateway::config::UpstreamMode;
use vidu_gateway::forward::sandbox::CALLBACK_KEY;

use crate::helpers::*;

/// The sandbox upstream, completing tasks `complete_after` seconds after their creation.
fn sandbox_config(complete_after: u64) -> TestConfig {
    TestConfig::new("http://127.0.0.1:9").upstream(|u| {
        u.mode = UpstreamMode::Sandbox;
        u.sandbox_complete_after_secs = complete_after;
    })
}

#[actix_web::test]
async fn a_sandbox_task_goes_from_created_through_processing_to_success() {
    let app = sandbox_config(10).spawn().await;
    let token = app.token("alice", "marketing");
    let req = json!({"model": "viduq3-pro", "images": ["https://example.com/a.png"], "duration": 8,
                     "resolution": "1080p", "payload": "my-ref", "audio": false});
    let (status, _, task) = app.post("/ent/v2/img2video", &token, req.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["state"], "created");
    assert_eq!(task["model"], "viduq3-pro");
    assert_eq!(task["duration"], 8);
    assert_eq!(task["resolution"], "1080p");
    assert_eq!(task["payload"], "my-ref");
    assert_eq!(
        task["credits"],
        8 * 24,
        "priced from the catalog: 24 credits/s at 1080p"
    );
    assert!(
        task["seed"].as_u64().unwrap() > 0,
        "a random seed is reported, as Vidu does"
    );
    let id = task["task_id"].as_str().unwrap().to_owned();
    let path = format!("/ent/v2/tasks/{id}/creations");

    let (_, _, q) = app.get(&path, &token).await;
    assert_eq!(
        (q["state"].clone(), q["creations"].clone()),
        (json!("created"), json!([]))
    );
    app.clock.advance(SignedDuration::from_secs(5));
    let (_, _, q) = app.get(&path, &token).await;
    assert_eq!(q["state"], "processing");
    app.clock.advance(SignedDuration::from_secs(5));
    let (status, _, q) = app.get(&path, &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(q["state"], "success");
    assert_eq!(q["credits"], 192);
    assert_eq!(q["payload"], "my-ref");
    let creation = &q["creations"][0];
    for key in ["id", "url", "cover_url", "watermarked_url"] {
        assert!(creation[key].is_string(), "{key} in {q}");
    }
}

#[actix_web::test]
async fn the_sandbox_applies_model_defaults_like_vidu() {
    let app = sandbox_config(10).spawn().await;
    let token = app.token("alice", "marketing");
    let (_, _, task) = app
        .post(
            "/ent/v2/img2video",
            &token,
            json!({"model": "viduq1", "images": ["https://e.com/a.png"]}).to_string(),
        )
        .await;
    assert_eq!(
        (task["duration"].clone(), task["resolution"].clone()),
        (json!(5), json!("1080p"))
    );
    assert_eq!(task["credits"], 80);
    assert_eq!(task["movement_amplitude"], "auto");
    let (_, _, task) = app
        .post(
            "/ent/v2/img2video",
            &token,
            json!({"model": "viduq2", "images": ["https://e.com/a.png"], "off_peak": true, "is_rec": true}).to_string(),
        )
        .await;
    // viduq2 720p 5 s = 5 + 10 × 5 = 55, off-peak × 0.5 → 28 (rounded up), + 10 for is_rec.
    assert_eq!(task["credits"], 38);
}

#[actix_web::test]
async fn an_unfinished_sandbox_task_can_be_cancelled_and_a_finished_one_cannot() {
    let app = sandbox_config(10).spawn().await;
    let token = app.token("alice", "marketing");
    for create in [
        json!({"model": "viduq2", "images": ["https://e.com/a.png"], "off_peak": true}),
        json!({"model": "viduq2", "images": ["https://e.com/a.png"]}),
    ] {
        let (_, _, task) = app
            .post("/ent/v2/img2video", &token, create.to_string())
            .await;
        let id = task["task_id"].as_str().unwrap().to_owned();
        let (status, _, body) = app
            .post(&format!("/ent/v2/tasks/{id}/cancel"), &token, "")
            .await;
        assert_eq!((status, body), (StatusCode::OK, json!({})), "{create}");
        let (_, _, q) = app
            .get(&format!("/ent/v2/tasks/{id}/creations"), &token)
            .await;
        assert_eq!(q["state"], "cancelled", "{create}");
        assert_eq!(q["err_code"], "UserCancelled");
        assert_eq!(q["credits"], 0, "a cancelled task is not charged");
        let (status, _, body) = app
            .post(&format!("/ent/v2/tasks/{id}/cancel"), &token, "")
            .await;
        assert_eq!(
            (status, body["reason"].clone()),
            (StatusCode::BAD_REQUEST, json!("BadRequest")),
            "a cancelled task cannot be cancelled again"
        );
    }

    let create = json!({"model": "viduq2", "images": ["https://e.com/a.png"]}).to_string();
    let (_, _, task) = app.post("/ent/v2/img2video", &token, create).await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    app.clock.advance(SignedDuration::from_secs(11));
    let (status, _, body) = app
        .post(&format!("/ent/v2/tasks/{id}/cancel"), &token, "")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["reason"], "BadRequest");
}

#[actix_web::test]
async fn a_fail_prompt_makes_a_sandbox_task_fail_with_nothing_charged() {
    let app = sandbox_config(10).spawn().await;
    let token = app.token("alice", "marketing");
    let req =
        json!({"model": "viduq2", "images": ["https://e.com/a.png"], "prompt": "a cat [fail]"});
    let (status, _, task) = app.post("/ent/v2/img2video", &token, req.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["state"], "created");
    assert_eq!(task["credits"], 55, "created and priced as any task");
    let path = format!(
        "/ent/v2/tasks/{}/creations",
        task["task_id"].as_str().unwrap()
    );
    app.clock.advance(SignedDuration::from_secs(5));
    let (_, _, q) = app.get(&path, &token).await;
    assert_eq!(q["state"], "processing");
    app.clock.advance(SignedDuration::from_secs(5));
    let (status, _, q) = app.get(&path, &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(q["state"], "failed", "{q}");
    assert_eq!(q["err_code"], "CreationFailed");
    assert_eq!(q["credits"], 0, "a failed task is not charged");
    assert_eq!(q["creations"], json!([]));
}

#[actix_web::test]
async fn an_off_peak_sandbox_task_queues_then_expires() {
    let app = sandbox_config(10)
        .upstream(|u| u.sandbox_offpeak_expire_secs = 60)
        .spawn()
        .await;
    let token = app.token("alice", "marketing");
    let req = json!({"model": "viduq2", "images": ["https://e.com/a.png"], "off_peak": true});
    let (status, _, task) = app.post("/ent/v2/img2video", &token, req.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["state"], "created");
    let path = format!(
        "/ent/v2/tasks/{}/creations",
        task["task_id"].as_str().unwrap()
    );
    for advance in [0, 10, 49] {
        app.clock.advance(SignedDuration::from_secs(advance));
        let (_, _, q) = app.get(&path, &token).await;
        assert_eq!(
            (q["state"].clone(), q["credits"].clone()),
            (json!("queueing"), json!(28)),
            "the sandbox never runs off-peak tasks"
        );
    }
    app.clock.advance(SignedDuration::from_secs(1));
    let (_, _, q) = app.get(&path, &token).await;
    assert_eq!(q["state"], "cancelled", "{q}");
    assert_eq!(q["err_code"], "OffPeakExpired");
    assert_eq!(q["credits"], 0, "an expired task is not charged");
}

/// The callbacks received so far, once `done` holds of them (polled for up to 10 s).
async fn callbacks_until(mock: &MockVidu, done: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let received = mock.received();
        if done(&received) {
            return received;
        }
        assert!(
            Instant::now() < deadline,
            "the awaited callbacks did not arrive in 10 s; got {received:?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

fn body_of(r: &Recorded) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

/// Asserts a callback is signed as CALLBACKS.md says, with the sandbox's key, for the registered URL's path and
/// query; returns its nonce.
fn assert_signed(r: &Recorded, app: &TestApp) -> String {
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/hooks/gateway/v1/callbacks/vidu");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("x-hmac-signed-headers"),
        Some("Date;x-request-nonce")
    );
    assert_eq!(r.header("x-hmac-algorithm"), Some("hmac-sha256"));
    assert_eq!(r.header("x-hmac-access-key"), Some("vidu"));
    let verified = signature::verify(
        CALLBACK_KEY.as_bytes(),
        "/hooks/gateway/v1/callbacks/vidu",
        "",
        |name| r.header(name),
        app.clock.now(),
    )
    .unwrap_or_else(|e| panic!("{e}: {r:?}"));
    assert_eq!(
        signature::verify(
            b"another-key",
            "/hooks/gateway/v1/callbacks/vidu",
            "",
            |name| r.header(name),
            app.clock.now()
        ),
        Err(signature::Unverified::Signature)
    );
    verified.nonce
}

/// A small recording server (the mock's) stands for the gateway's public address: the gateway gives the sandbox its
/// own callback URL (`callbacks.public_base_url`), and the sandbox posts each state change to it, signed with its key.
#[actix_web::test]
async fn the_sandbox_posts_signed_callbacks_for_processing_and_success() {
    let receiver = MockVidu::start().await;
    receiver.respond(|_| Reply::json(200, json!({})));
    let app = sandbox_config(1)
        .settings(|s| s.callbacks.public_base_url = format!("{}/hooks", receiver.url))
        .spawn()
        .await;
    let token = app.token("alice", "marketing");
    let req = json!({"model": "viduq2", "images": ["https://e.com/a.png"], "payload": "ref-1"});
    let (status, _, task) = app.post("/ent/v2/img2video", &token, req.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    let id = task["task_id"].as_str().unwrap().to_owned();

    let received = callbacks_until(&receiver, |r| {
        r.iter().any(|c| body_of(c)["state"] == "success")
    })
    .await;
    let states: Vec<Value> = received
        .iter()
        .map(|c| body_of(c)["state"].clone())
        .collect();
    assert_eq!(states, [json!("processing"), json!("success")]);
    let mut nonces = Vec::new();
    for callback in &received {
        nonces.push(assert_signed(callback, &app));
        let body = body_of(callback);
        assert_eq!(body["id"], id, "{body}");
        assert_eq!(body["payload"], "ref-1");
    }
    assert_ne!(nonces[0], nonces[1], "a fresh nonce per delivery");
    let success = body_of(&received[1]);
    assert_eq!(success["credits"], 55);
    assert_eq!(success["err_code"], "");
    assert!(success["creations"][0]["url"].is_string(), "{success}");
    let processing = body_of(&received[0]);
    assert_eq!(
        (
            processing["credits"].clone(),
            processing["creations"].clone()
        ),
        (json!(55), json!([]))
    );
}

/// A cancel through the API is announced at once; an off-peak task's expiry is announced when it expires; a
/// terminal callback answered with an error is tried again.
#[actix_web::test]
async fn the_sandbox_announces_cancels_and_expiries_and_retries_terminal_callbacks() {
    let receiver = MockVidu::start().await;
    let app = sandbox_config(30)
        .upstream(|u| u.sandbox_offpeak_expire_secs = 1)
        .settings(|s| s.callbacks.public_base_url = format!("{}/hooks", receiver.url))
        .spawn()
        .await;
    let token = app.token("alice", "marketing");
    let create = |off_peak: bool| {
        json!({"model": "viduq2", "images": ["https://e.com/a.png"], "off_peak": off_peak})
            .to_string()
    };
    // The first delivery of each terminal callback fails: the second one counts.
    let failed_once = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let seen = failed_once.clone();
    receiver.respond(move |r| {
        let id = serde_json::from_slice::<Value>(&r.body).unwrap()["id"]
            .clone()
            .to_string();
        if seen.lock().unwrap().insert(id) {
            Reply::json(503, json!({}))
        } else {
            Reply::json(200, json!({}))
        }
    });

    let (_, _, task) = app.post("/ent/v2/img2video", &token, create(false)).await;
    let cancelled_id = task["task_id"].as_str().unwrap().to_owned();
    let (status, _, _) = app
        .post(&format!("/ent/v2/tasks/{cancelled_id}/cancel"), &token, "")
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, task) = app.post("/ent/v2/img2video", &token, create(true)).await;
    let expired_id = task["task_id"].as_str().unwrap().to_owned();

    let received = callbacks_until(&receiver, |r| r.len() >= 4).await;
    let mut seen: Vec<(String, String, String)> = received
        .iter()
        .map(|c| {
            assert_signed(c, &app);
            let b = body_of(c);
            assert_eq!(b["credits"], 0, "{b}");
            (
                b["id"].as_str().unwrap().to_owned(),
                b["state"].as_str().unwrap().to_owned(),
                b["err_code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    let cancelled = (
        cancelled_id,
        "cancelled".to_owned(),
        "UserCancelled".to_owned(),
    );
    let expired = (
        expired_id,
        "cancelled".to_owned(),
        "OffPeakExpired".to_owned(),
    );
    let mut expected = vec![cancelled.clone(), cancelled, expired.clone(), expired];
    expected.sort();
    assert_eq!(
        seen, expected,
        "each delivered twice: the 503, then the retry"
    );
}
#[actix_web::test]
async fn unknown_sandbox_tasks_get_vidus_404_task_not_found() {
    let app = sandbox_config(10).spawn().await;
    let token = app.token("alice", "marketing");
    for path in ["/ent/v2/tasks/999/creations", "/ent/v2/tasks/abc/creations"] {
        let (status, _, body) = app.get(path, &token).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["reason"], "TaskNotFound");
        assert_eq!(body["code"], 404);
    }
    let (status, _, body) = app.post("/ent/v2/tasks/999/cancel", &token, "").await;
    assert_eq!(
        (status, body["reason"].clone()),
        (StatusCode::NOT_FOUND, json!("TaskNotFound"))
    );
}

#[actix_web::test]
async fn a_request_vidu_would_refuse_is_refused_before_it_reaches_the_sandbox() {
    let app = sandbox_config(10).spawn().await;
    let token = app.token("alice", "marketing");
    let (status, _, body) = app
        .post(
            "/ent/v2/img2video",
            &token,
            json!({"model": "viduq2", "images": ["https://e.com/a.png"], "duration": 12})
                .to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], 400);
    assert!(
        body["reason"].as_str().unwrap().starts_with("Field"),
        "{body}"
    );
    assert_eq!(
        body["metadata"]["source"], "gateway",
        "the gateway's validation answered"
    );
}

/// The sandbox never fetches a URL a caller chose: with relaying off the caller's `callback_url` reaches it
/// unchanged, and it is not called (no request from the gateway's host to an address of the caller's choosing).
#[actix_web::test]
async fn the_sandbox_calls_no_callback_url_but_the_gateways_own() {
    let receiver = MockVidu::start().await;
    receiver.respond(|_| Reply::json(200, json!({})));
    let app = sandbox_config(1).spawn().await;
    let token = app.token("alice", "marketing");
    let req = json!({"model": "viduq2", "images": ["https://e.com/a.png"],
                     "callback_url": format!("{}/internal/admin", receiver.url)});
    let (status, _, task) = app.post("/ent/v2/img2video", &token, req.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    actix_web::rt::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(receiver.received().is_empty(), "{:?}", receiver.received());
}
