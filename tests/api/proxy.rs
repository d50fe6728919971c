//! The Vidu-compatible proxy: what reaches Vidu, what comes back, and every error the gateway produces itself.

use std::time::Duration;

use actix_web::http::StatusCode;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::helpers::*;

#[actix_web::test]
async fn vidu_receives_the_enterprise_key_and_never_the_callers_token_or_cookies() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let token = app.token("alice", "marketing");
    let mut res = app
        .client
        .post(format!("{}/ent/v2/img2video", app.url))
        .insert_header(("authorization", format!("Bearer {token}")))
        .insert_header(("content-type", "application/json"))
        .insert_header(("cookie", "session=secret-cookie"))
        .insert_header(("x-team-secret", "do-not-forward"))
        .insert_header(("connection", "keep-alive, x-team-secret"))
        .send_body(small_request().to_string())
        .await
        .unwrap();
    let (status, _, body) = read(&mut res).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got = mock.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/ent/v2/img2video");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Token {VIDU_KEY}").as_str())
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("cookie").is_none());
    assert!(r.header("x-team-secret").is_none());
    for (k, v) in &r.headers {
        assert!(!v.contains(&token), "caller token leaked in {k}");
        assert!(!v.contains("Bearer"), "caller scheme leaked in {k}");
    }
    let host = r.header("host").unwrap();
    assert!(
        mock.url.ends_with(host),
        "Host is Vidu's ({host}), not the gateway's"
    );
}

#[actix_web::test]
async fn the_body_arrives_byte_for_byte() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    // Odd spacing, key order, escapes and non-ASCII: any re-serialisation would change these bytes.
    let body = "{ \"prompt\":\"caf\\u00e9 \u{1F431}\",\n  \"images\" : [\"https://example.com/a.png\"],\"model\":\"viduq2\" , \"duration\":5}";
    let (status, _, _) = app
        .post("/ent/v2/img2video", &app.token("a", "t"), body)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mock.received()[0].body, Bytes::from(body));
}

#[actix_web::test]
async fn vidus_own_error_envelopes_come_back_unchanged() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    for (status, reason) in [
        (400, "CreditInsufficient"),
        (429, "QuotaExceeded"),
        (500, "InternalServiceFailure"),
    ] {
        let vidu_body = json!({"code": status, "reason": reason, "message": "from vidu", "metadata": {"trace_id": "vidu-trace"}});
        let expected = vidu_body.clone();
        mock.respond(move |_| Reply::json(status, vidu_body.clone()));
        let (got, headers, body) = app.create(&app.token("a", "t"), &small_request()).await;
        assert_eq!(got.as_u16(), status);
        assert_eq!(body, expected, "Vidu's body is passed through untouched");
        assert!(header(&headers, "x-request-id").is_some());
    }
}

#[actix_web::test]
async fn an_unreachable_vidu_is_502_upstream_unavailable() {
    let port = closed_port();
    let app = TestConfig::new(&format!("http://127.0.0.1:{port}"))
        .spawn()
        .await;
    let (status, headers, body) = app.create(&app.token("a", "t"), &small_request()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_envelope(status, &headers, &body, "UpstreamUnavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("nothing was created")
    );
}

#[actix_web::test]
async fn a_slow_vidu_is_504_and_the_create_is_not_retried() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock)
        .upstream(|u| u.request_timeout_ms = 300)
        .spawn()
        .await;
    mock.respond(|_| Reply::json(200, created_task("1", 1)).delayed(Duration::from_millis(1500)));
    let (status, headers, body) = app.create(&app.token("a", "t"), &small_request()).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_envelope(status, &headers, &body, "UpstreamTimeout");
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(mock.received().len(), 1, "never retried");
}

/// A JSON object of exactly `len` bytes.
fn body_of_len(len: usize) -> String {
    let head = r#"{"model":"viduq2","images":["https://example.com/a.png"],"payload":""#;
    let tail = r#""}"#;
    format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
}

#[actix_web::test]
async fn a_body_at_the_limit_passes_and_one_byte_more_is_413() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock)
        .server(|s| s.max_body_bytes = 2000)
        .spawn()
        .await;
    let token = app.token("a", "t");
    let (status, _, body) = app
        .post("/ent/v2/img2video", &token, body_of_len(2000))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, headers, body) = app
        .post("/ent/v2/img2video", &token, body_of_len(2001))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_envelope(status, &headers, &body, "PayloadTooLarge");
    assert!(body["message"].as_str().unwrap().contains("2000"));
    assert_eq!(
        mock.received().len(),
        1,
        "the oversized body was not forwarded"
    );
}

#[actix_web::test]
async fn a_chunked_body_over_the_limit_is_413_while_reading() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock)
        .server(|s| s.max_body_bytes = 2000)
        .spawn()
        .await;
    let chunks: Vec<Result<Bytes, std::io::Error>> = body_of_len(5000)
        .into_bytes()
        .chunks(700)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let mut res = app
        .client
        .post(format!("{}/ent/v2/img2video", app.url))
        .insert_header(("authorization", format!("Bearer {}", app.token("a", "t"))))
        .insert_header(("content-type", "application/json"))
        .send_stream(futures_util::stream::iter(chunks))
        .await
        .unwrap();
    let (status, headers, body) = read(&mut res).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_envelope(status, &headers, &body, "PayloadTooLarge");
    assert!(mock.received().is_empty());
}

#[actix_web::test]
async fn a_non_json_content_type_is_415() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let mut res = app
        .client
        .post(format!("{}/ent/v2/img2video", app.url))
        .insert_header(("authorization", format!("Bearer {}", app.token("a", "t"))))
        .insert_header(("content-type", "text/plain"))
        .send_body(small_request().to_string())
        .await
        .unwrap();
    let (status, headers, body) = read(&mut res).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_envelope(status, &headers, &body, "UnsupportedMediaType");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("application/json")
    );
    assert!(mock.received().is_empty());
}

#[actix_web::test]
async fn unknown_paths_wrong_methods_and_malformed_json_get_the_envelope() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let token = app.token("a", "t");

    let (status, headers, body) = app.get("/ent/v2/nope", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_envelope(status, &headers, &body, "NotFound");

    let (status, headers, body) = app.get("/ent/v2/img2video", &token).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_envelope(status, &headers, &body, "MethodNotAllowed");

    for bad in ["{\"model\": ", "[1,2]", "\"text\"", "", "\u{0}"] {
        let (status, headers, body) = app.post("/ent/v2/img2video", &token, bad.to_owned()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert_envelope(status, &headers, &body, "BadRequest");
    }
    let (status, headers, body) = app
        .post(
            "/ent/v2/img2video",
            &token,
            Bytes::from_static(b"{\"a\":\"\xff\"}"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_envelope(status, &headers, &body, "BadRequest");
    assert!(mock.received().is_empty());
}

#[actix_web::test]
async fn a_sane_request_id_round_trips_and_an_insane_one_is_replaced() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let token = app.token("a", "t");
    let send = |id: &'static str| {
        app.client
            .post(format!("{}/ent/v2/img2video", app.url))
            .insert_header(("authorization", format!("Bearer {token}")))
            .insert_header(("content-type", "application/json"))
            .insert_header(("x-request-id", id))
            .send_body(small_request().to_string())
    };
    let res = send("client-req-42").await.unwrap();
    assert_eq!(res.headers().get("x-request-id").unwrap(), "client-req-42");
    assert_eq!(
        mock.received()[0].header("x-request-id"),
        Some("client-req-42")
    );

    let res = send("has space").await.unwrap();
    let id = res
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(id, "has space");
    assert_eq!(id.len(), 32);
    assert_eq!(mock.received()[1].header("x-request-id"), Some(id.as_str()));

    let long: &'static str = Box::leak("a".repeat(129).into_boxed_str());
    let res = send(long).await.unwrap();
    assert_ne!(res.headers().get("x-request-id").unwrap(), long);
    let ok128: &'static str = Box::leak("b".repeat(128).into_boxed_str());
    let res = send(ok128).await.unwrap();
    assert_eq!(res.headers().get("x-request-id").unwrap(), ok128);

    // Errors carry it too, as metadata.trace_id.
    let mut res = app
        .client
        .get(format!("{}/nowhere", app.url))
        .insert_header(("x-request-id", "trace-me"))
        .send()
        .await
        .unwrap();
    let (_, _, body) = read(&mut res).await;
    assert_eq!(body["metadata"]["trace_id"], "trace-me");
}

#[actix_web::test]
async fn no_token_or_a_bad_token_is_401_and_nothing_is_forwarded() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let mut res = app
        .client
        .post(format!("{}/ent/v2/img2video", app.url))
        .insert_header(("content-type", "application/json"))
        .send_body(small_request().to_string())
        .await
        .unwrap();
    let (status, headers, body) = read(&mut res).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_envelope(status, &headers, &body, "Unauthorized");
    assert_eq!(header(&headers, "www-authenticate"), Some("Bearer"));

    let now = jiff::Timestamp::now().as_second();
    let wrong_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "a", "team": "t", "exp": now + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-that-is-long-enough-xx"),
    )
    .unwrap();
    let cases = [
        ("garbage", "not a well-formed JWT"),
        (wrong_key.as_str(), "signature"),
        (
            &mint(json!({"sub": "a", "team": "t", "exp": now - 3600})),
            "expired",
        ),
        (&mint(json!({"sub": "a"})), "team"),
    ];
    for (token, needle) in cases {
        let (status, headers, body) = app.create(token, &small_request()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{needle}");
        assert_envelope(status, &headers, &body, "Unauthorized");
        let www = header(&headers, "www-authenticate").unwrap();
        assert!(www.starts_with("Bearer error=\"invalid_token\""), "{www}");
        assert!(body["message"].as_str().unwrap().contains(needle), "{body}");
        assert!(
            !body.to_string().contains(token),
            "the token is never echoed"
        );
    }
    assert!(mock.received().is_empty());
}

#[actix_web::test]
async fn task_query_and_cancel_are_forwarded_to_their_vidu_paths() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let token = app.token("a", "t");
    mock.respond(|r| {
        if r.path.ends_with("/creations") {
            Reply::json(
                200,
                json!({"id": "123", "state": "success", "credits": 25, "creations": []}),
            )
        } else if r.path.ends_with("/cancel") {
            Reply::json(200, json!({}))
        } else {
            Reply::json(200, created_task("123", 25))
        }
    });
    let (status, _, _) = app.create(&token, &small_request()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = app.get("/ent/v2/tasks/123/creations", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "success");
    let (status, _, body) = app
        .post("/ent/v2/tasks/123/cancel", &token, "{\"id\":\"123\"}")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({}));
    let got = mock.received();
    assert_eq!(
        (got[1].method.as_str(), got[1].path.as_str()),
        ("GET", "/ent/v2/tasks/123/creations")
    );
    assert_eq!(
        (got[2].method.as_str(), got[2].path.as_str()),
        ("POST", "/ent/v2/tasks/123/cancel")
    );
    assert_eq!(
        got[2].body,
        Bytes::from_static(b"{}"),
        "the gateway's body, not the caller's"
    );
    assert_eq!(
        got[1].header("authorization"),
        Some(format!("Token {VIDU_KEY}").as_str())
    );

    // An id that cannot be a Vidu task never leaves the gateway.
    let (status, headers, body) = app
        .get("/ent/v2/tasks/..%2Fcredits/creations", &token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_envelope(status, &headers, &body, "TaskNotFound");
    assert_eq!(mock.received().len(), 3);
}

#[actix_web::test]
async fn metrics_count_requests_and_upstream_outcomes() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    app.create(&app.token("a", "t"), &small_request()).await;
    app.create("bad", &small_request()).await;
    let text = app.metrics_text().await;
    assert!(text.contains(r#"vidu_gateway_http_requests_total{route="/ent/v2/img2video",method="POST",status="200"} 1"#), "{text}");
    assert!(
        text.contains(
            r#"vidu_gateway_upstream_requests_total{endpoint="img2video",outcome="2xx"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"vidu_gateway_auth_failures_total{reason="malformed"} 1"#),
        "{text}"
    );
    assert!(text.contains("vidu_gateway_http_request_duration_seconds_bucket"));
    assert!(!text.contains(VIDU_KEY));
}

#[actix_web::test]
async fn metrics_move_to_their_own_listener_when_configured() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock)
        .server(|s| s.metrics_listen = Some("127.0.0.1:0".into()))
        .spawn()
        .await;
    let (status, _, _) = app.get_open("/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not on the main listener");
    let port = app.metrics_port.unwrap();
    let res = app
        .client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[actix_web::test]
async fn health_and_readiness_need_no_token() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let (status, _, body) = app.get_open("/healthz").await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::OK, json!("ok"))
    );
    let (status, _, body) = app.get_open("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ready");
}

#[actix_web::test]
async fn the_config_endpoint_is_for_admins_and_redacts_secrets() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let (status, headers, body) = app.get("/gateway/v1/config", &app.token("a", "t")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_envelope(status, &headers, &body, "Forbidden");
    let (status, _, body) = app.get("/gateway/v1/config", &app.admin_token()).await;
    assert_eq!(status, StatusCode::OK);
    let text = body.to_string();
    assert!(
        !text.contains(VIDU_KEY) && !text.contains(HS_SECRET),
        "{text}"
    );
    assert_eq!(body["config"]["upstream"]["api_key"], "<redacted>");
    assert_eq!(body["version"].as_str().unwrap().len(), 12);
    assert!(matches!(body["config"]["models"], Value::Object(ref m) if m.len() == 4));
}

#[actix_web::test]
async fn a_cancel_sends_vidu_the_gateways_own_body_never_the_callers() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let alice = app.token("alice", "t");
    mock.respond(|r| {
        if r.path.ends_with("/cancel") {
            Reply::json(200, json!({}))
        } else {
            Reply::json(200, created_task("123", 25))
        }
    });
    let (status, _, _) = app.create(&alice, &small_request()).await;
    assert_eq!(status, StatusCode::OK);
    // Ownership is checked on the path's id; a body naming someone else's task must not reach Vidu.
    for body in [
        "{\"id\":\"999-someone-elses\"}",
        "{\"id\":\"123\",\"extra\":[1,2,3]}",
        "",
    ] {
        let (status, _, answer) = app.post("/ent/v2/tasks/123/cancel", &alice, body).await;
        assert_eq!(status, StatusCode::OK, "{body}: {answer}");
        let got = mock.received();
        let cancel = got.last().unwrap();
        assert_eq!(cancel.path, "/ent/v2/tasks/123/cancel");
        assert_eq!(cancel.body, Bytes::from_static(b"{}"), "sent for {body:?}");
        assert_eq!(cancel.header("content-type"), Some("application/json"));
    }
}

#[actix_web::test]
async fn an_upstream_echoing_the_enterprise_key_never_gets_it_to_the_caller() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let token = app.token("alice", "t");
    // Whatever sits at base_url echoes the request's Authorization header in its body and its headers.
    mock.respond(|r| {
        let auth = r.header("authorization").unwrap_or("").to_owned();
        let mut task = created_task("777", 25);
        task["echo"] = json!({"authorization": auth, "again": auth});
        Reply::json(200, task)
            .with_header(
                "content-type",
                &format!("application/json; echo=\"{auth}\""),
            )
            .with_header("x-echo-authorization", &auth)
    });
    let (status, headers, body) = app.create(&token, &small_request()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["task_id"], "777", "the rest of the answer is intact");
    assert_eq!(body["echo"]["authorization"], "Token [REDACTED]");
    assert_eq!(body["echo"]["again"], "Token [REDACTED]");
    assert!(!body.to_string().contains(VIDU_KEY));
    for (name, value) in &headers {
        assert!(
            !value.contains(VIDU_KEY),
            "the key leaked in {name}: {value}"
        );
    }
    assert!(
        header(&headers, "x-echo-authorization").is_none(),
        "Vidu's other headers are not passed on"
    );
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/json; echo=\"Token [REDACTED]\"")
    );

    // Task queries and cancels too.
    let (status, _, body) = app.get("/ent/v2/tasks/777/creations", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.to_string().contains(VIDU_KEY), "{body}");
    let (status, _, body) = app.post("/ent/v2/tasks/777/cancel", &token, "{}").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.to_string().contains(VIDU_KEY), "{body}");

    let text = app.metrics_text().await;
    for endpoint in ["img2video", "task_creations", "task_cancel"] {
        assert!(
            text.contains(&format!(
                "vidu_gateway_upstream_secret_scrubbed_total{{endpoint=\"{endpoint}\"}} 1"
            )),
            "{endpoint}: {text}"
        );
    }
    assert!(!text.contains(VIDU_KEY));
}
