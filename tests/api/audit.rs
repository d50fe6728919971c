//! The audit trail: the configuration put in force at start and each reload (version, keys changed, a secret by its
//! key only, applied or refused and why), and admins acting on what is not theirs (another's usage, another's task
//! read or cancelled) — as `GET /gateway/v1/audit` lists them, newest first, by kind and time, in pages.

use actix_web::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::lifecycle::{created_id, eventually, living_vidu};

async fn entries(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, _, v) = app
        .get(&format!("/gateway/v1/audit{query}"), &app.admin_token())
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["entries"].as_array().cloned().unwrap_or_default()
}

/// Waits until `query` lists `n` entries.
async fn wait_for(app: &TestApp, query: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} audit entries for {query}"), || async {
        let l = entries(app, query).await;
        (l.len() == n).then_some(l)
    })
    .await
}

async fn admins_acting_on_what_is_not_theirs_are_audited() {
    let mock = MockVidu::start().await;
    living_vidu(&mock, 40);
    let app = TestApp::builder(&mock).spawn().await;
    let loaded = wait_for(&app, "?kind=config_load", 1).await;
    assert_eq!(
        (&loaded[0]["actor"], &loaded[0]["outcome"]),
        (&json!("gateway"), &json!("applied"))
    );
    assert!(loaded[0]["detail"]["version"].is_string(), "{loaded:?}");

    let alice = app.token("alice", "video");
    let id = created_id(&app, &alice).await;
    // Alice's own reads are not audited; the admin's reads of hers are.
    app.get("/gateway/v1/usage", &alice).await;
    app.get(&format!("/ent/v2/tasks/{id}/creations"), &alice)
        .await;
    let admin = app.admin_token();
    let (status, _, _) = app.get("/gateway/v1/usage?user=alice", &admin).await;
    assert_eq!(status, StatusCode::OK);
    app.get("/gateway/v1/usage", &admin).await;
    let (status, _, _) = app
        .get(&format!("/ent/v2/tasks/{id}/creations"), &admin)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = app
        .post(&format!("/ent/v2/tasks/{id}/cancel"), &admin, "")
        .await;
    assert_eq!(status, StatusCode::OK);

    let usage = wait_for(&app, "?kind=usage_read", 1).await;
    assert_eq!(
        (&usage[0]["actor"], &usage[0]["detail"]["user"]),
        (&json!("root"), &json!("alice"))
    );
    let read = wait_for(&app, "?kind=task_read", 1).await;
    assert_eq!(
        (&read[0]["detail"]["task_id"], &read[0]["detail"]["owner"]),
        (&json!(id), &json!("alice"))
    );
    wait_for(&app, "?kind=task_cancelled", 1).await;
    // Newest first, in pages.
    let all = wait_for(&app, "", 4).await;
    let kinds: Vec<&str> = all.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["task_cancelled", "task_read", "usage_read", "config_load"]
    );
    let (_, _, first) = app.get("/gateway/v1/audit?limit=3", &admin).await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let (_, _, rest) = app
        .get(
            &format!("/gateway/v1/audit?limit=3&cursor={cursor}"),
            &admin,
        )
        .await;
    assert_eq!(rest["entries"][0]["kind"], "config_load", "{rest}");
    assert_eq!(rest["next_cursor"], Value::Null);
    // Time filters: nothing before the gateway started, nothing after tomorrow.
    assert_eq!(entries(&app, "?until=2000-01-01").await.len(), 0);
    assert_eq!(entries(&app, "?since=2000-01-01T00:00:00Z").await.len(), 4);

    // Admins only, and bad filters say what to send.
    let (status, _, body) = app.get("/gateway/v1/audit", &alice).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    for (query, names) in [
        ("?kind=everything", "config_reload"),
        ("?since=yesterday", "RFC 3339"),
        ("?limit=0", "1 to 500"),
        ("?cursor=nope", "next_cursor"),
    ] {
        let (status, _, body) = app.get(&format!("/gateway/v1/audit{query}"), &admin).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["reason"], "BadRequest");
        assert!(body["message"].as_str().unwrap().contains(names), "{body}");
    }
}

crate::on_both_backends!(admins_acting_on_what_is_not_theirs_are_audited);
