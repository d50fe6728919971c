//! The sandbox upstream behaves like Vidu: create → query (created, processing, success) → cancel, 404s.

use actix_web::http::StatusCode;
use jiff::SignedDuration;
use serde_json::json;

use vidu_gateway::config::UpstreamMode;

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
    let create =
        json!({"model": "viduq2", "images": ["https://e.com/a.png"], "off_peak": true}).to_string();
    let (_, _, task) = app.post("/ent/v2/img2video", &token, create.clone()).await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    let (status, _, body) = app
        .post(&format!("/ent/v2/tasks/{id}/cancel"), &token, "")
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (_, _, q) = app
        .get(&format!("/ent/v2/tasks/{id}/creations"), &token)
        .await;
    assert_eq!(q["state"], "failed");
    assert_eq!(q["err_code"], "UserCancelled");
    assert_eq!(q["credits"], 0, "a cancelled task is not charged");

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
