//! How a replica reaches Redis: the password from `state.redis_password_file` (or the URL), never shown anywhere;
//! `rediss://` against a TLS-only `redis-server` with its own CA (`state.redis_ca_file`), and a certificate it
//! cannot verify refused.

use actix_web::http::StatusCode;
use serde_json::json;
use vidu_gateway::config::{Secret, StateBackend};
use vidu_gateway::state::redis::server::{RedisServer, skipped};

use crate::helpers::*;

const PASSWORD: &str = "s3cret-redis-pw-4711";

fn on(server: &RedisServer, mock: &MockVidu) -> TestConfig {
    TestApp::builder(mock).state(|s| {
        s.backend = StateBackend::Redis;
        s.redis_url = Secret::new(server.url());
        s.redis_timeout_ms = 2000;
    })
}

fn admin() -> String {
    mint(json!({"sub": "root", "team": "ops", "roles": ["gw-admin"]}))
}

#[actix_web::test]
async fn the_redis_password_comes_from_its_file_and_is_shown_nowhere() {
    if skipped() {
        return;
    }
    let server = RedisServer::start_with_password(PASSWORD).unwrap();
    let mock = MockVidu::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis_password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let config = on(&server, &mock).state(|s| s.redis_password_file = Some(file.clone()));
    let bin = Binary::start(&config, &[]).await;
    let alice = mint(json!({"sub": "alice", "team": "mkt"}));

    let (status, _, body) = send(
        "POST",
        format!("{}/ent/v2/img2video", bin.url()),
        &alice,
        Some(&small_request()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, shown) = send(
        "GET",
        format!("{}/gateway/v1/config", bin.url()),
        &admin(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert!(!shown.to_string().contains(PASSWORD), "{shown}");
    let path = bin.config_path();
    let (code, out, err) = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains(PASSWORD) && !err.contains(PASSWORD),
        "{out}{err}"
    );
    assert!(!bin.logs().contains(PASSWORD), "{}", bin.logs());

    // A wrong password: the backend is unavailable (fail_closed: 503), and the answer says so without the
    // password it tried.
    std::fs::write(&file, "not-the-password\n").unwrap();
    let wrong = Binary::start(&config, &[]).await;
    let (status, _, body) = send("GET", format!("{}/readyz", wrong.url()), "", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(!body.to_string().contains("not-the-password"), "{body}");
    assert!(
        !wrong.logs().contains("not-the-password"),
        "{}",
        wrong.logs()
    );
}

#[actix_web::test]
async fn a_password_in_the_url_works_and_is_redacted() {
    if skipped() {
        return;
    }
    let server = RedisServer::start_with_password(PASSWORD).unwrap();
    let mock = MockVidu::start().await;
    let url = server
        .url()
        .replace("redis://", &format!("redis://:{PASSWORD}@"));
    let app = TestApp::spawn(on(&server, &mock).state(|s| s.redis_url = Secret::new(url))).await;
    let alice = app.token("alice", "mkt");
    assert_eq!(app.create(&alice, &small_request()).await.0, StatusCode::OK);
    let (status, _, shown) = app.get("/gateway/v1/config", &app.admin_token()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!shown.to_string().contains(PASSWORD), "{shown}");
    // `/readyz` says where the replica's Redis is, without the password.
    let (status, _, ready) = app.get_open("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["state"]["redis"], server.url(), "{ready}");
    assert!(!ready.to_string().contains(PASSWORD), "{ready}");
}

#[actix_web::test]
async fn rediss_reaches_a_tls_redis_whose_ca_is_configured_and_refuses_one_it_cannot_verify() {
    if skipped() {
        return;
    }
    let server = RedisServer::start_tls().unwrap_or_else(|e| panic!("{e}"));
    assert!(server.url().starts_with("rediss://"));
    let mock = MockVidu::start().await;
    let ca = server.ca_file().unwrap();
    let app = TestApp::spawn(on(&server, &mock).state(|s| s.redis_ca_file = Some(ca))).await;
    let alice = app.token("alice", "mkt");
    assert_eq!(app.create(&alice, &small_request()).await.0, StatusCode::OK);
    let (status, _, ready) = app.get_open("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["state"]["reachable"], true, "{ready}");

    // The same server without its CA: the certificate is not trusted, nothing is admitted.
    let untrusted = TestApp::spawn(on(&server, &mock).state(|s| s.redis_timeout_ms = 500)).await;
    let (status, _, body) = untrusted.create(&alice, &small_request()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, _, ready) = untrusted.get_open("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(
        mock.received().len(),
        1,
        "only the create through the trusted connection reached Vidu"
    );
}
