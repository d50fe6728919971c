//! Identity: every algorithm, key source, time and claim check, the classic attacks, and JWKS rotation.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, HttpServer, web};
use jiff::SignedDuration;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use vidu_gateway::auth::jwks::REFETCH_COOLDOWN;
use vidu_gateway::config::{AuthSettings, Secret};

use crate::helpers::*;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIX}/{name}")).unwrap()
}

fn private_key(alg: Algorithm, name: &str) -> EncodingKey {
    let p = || pem(&format!("{name}.key.pem"));
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(&p()).unwrap(),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&p()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&p()).unwrap(),
        _ => EncodingKey::from_secret(HS_SECRET.as_bytes()),
    }
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn claims() -> Value {
    json!({"sub": "alice", "team": "marketing", "exp": now() + 600})
}

fn sign(alg: Algorithm, key: &str, kid: Option<&str>, claims: &Value) -> String {
    // The gateway's provider (ring for RS/PS/ES) before jsonwebtoken's first use in this process.
    vidu_gateway::auth::crypto::install();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &private_key(alg, key)).unwrap()
}

/// A fixture key file.
fn fix(name: &str) -> PathBuf {
    Path::new(FIX).join(name)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The base configuration whose `[auth]` holds only `admin_role = "gw-admin"` and what `keys` sets.
fn auth_config(mock: &MockVidu, keys: impl FnOnce(&mut AuthSettings)) -> TestConfig {
    TestApp::builder(mock).auth(|a| {
        *a = AuthSettings {
            admin_role: "gw-admin".into(),
            ..AuthSettings::default()
        };
        keys(a);
    })
}

/// Every supported algorithm: the HS test secret and the RSA, EC P-256/P-384 and Ed25519 public keys.
fn pem_keys(mock: &MockVidu) -> TestConfig {
    auth_config(mock, |a| {
        a.algorithms = strings(&[
            "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "ES256", "ES384",
            "EdDSA",
        ]);
        a.hs256_secret = Secret::new(HS_SECRET);
        a.public_key_files = [
            "rsa1.pub.pem",
            "ec256.pub.pem",
            "ec384.pub.pem",
            "ed25519.pub.pem",
        ]
        .map(fix)
        .into();
    })
}

async fn status_of(app: &TestApp, token: &str) -> (StatusCode, Value, Vec<(String, String)>) {
    let (s, h, b) = app.create(token, &small_request()).await;
    (s, b, h)
}

async fn assert_refused(app: &TestApp, token: &str, needle: &str) {
    let (status, body, headers) = status_of(app, token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{needle}: {body}");
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains(needle), "expected {needle:?} in {msg:?}");
    let www = header(&headers, "www-authenticate").unwrap();
    assert!(www.contains("error=\"invalid_token\""), "{www}");
    assert!(www.contains("error_description="), "{www}");
    assert!(!msg.contains(token) && !www.contains(token));
}

#[actix_web::test]
async fn every_supported_algorithm_is_accepted_with_its_key() {
    let mock = MockVidu::start().await;
    let app = pem_keys(&mock).spawn().await;
    let cases = [
        (Algorithm::HS256, "hs"),
        (Algorithm::HS384, "hs"),
        (Algorithm::HS512, "hs"),
        (Algorithm::RS256, "rsa1"),
        (Algorithm::RS384, "rsa1"),
        (Algorithm::RS512, "rsa1"),
        (Algorithm::PS256, "rsa1"),
        (Algorithm::ES256, "ec256"),
        (Algorithm::ES384, "ec384"),
        (Algorithm::EdDSA, "ed25519"),
    ];
    for (alg, key) in cases {
        let (status, body, _) = status_of(&app, &sign(alg, key, None, &claims())).await;
        assert_eq!(status, StatusCode::OK, "{alg:?}: {body}");
    }
    assert_eq!(mock.received().len(), cases.len());
}

#[actix_web::test]
async fn a_token_signed_with_another_key_is_refused() {
    let mock = MockVidu::start().await;
    let app = pem_keys(&mock).spawn().await;
    assert_refused(
        &app,
        &sign(Algorithm::RS256, "rsa2", None, &claims()),
        "signature is invalid",
    )
    .await;
    // An algorithm outside the allow-list.
    let app2 = auth_config(&mock, |a| {
        a.algorithms = strings(&["ES256"]);
        a.public_key_files = vec![fix("ec256.pub.pem")];
    })
    .spawn()
    .await;
    assert_refused(
        &app2,
        &sign(Algorithm::RS256, "rsa1", None, &claims()),
        "not allowed",
    )
    .await;
    assert!(mock.received().is_empty());
}

#[actix_web::test]
async fn time_claims_are_checked_with_the_configured_leeway() {
    let mock = MockVidu::start().await;
    let app = pem_keys(&mock).auth(|a| a.leeway_secs = 60).spawn().await;
    let t = now();
    let with = |extra: Value| {
        let mut c = json!({"sub": "alice", "team": "marketing", "exp": t + 600});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        sign(Algorithm::ES256, "ec256", None, &c)
    };
    assert_refused(&app, &with(json!({"exp": t - 120})), "expired at").await;
    assert_eq!(
        status_of(&app, &with(json!({"exp": t - 30}))).await.0,
        StatusCode::OK,
        "within leeway"
    );
    assert_refused(&app, &with(json!({"nbf": t + 120})), "not valid before").await;
    assert_eq!(
        status_of(&app, &with(json!({"nbf": t + 30}))).await.0,
        StatusCode::OK
    );
    assert_refused(&app, &with(json!({"iat": t + 120})), "issued in the future").await;
    assert_eq!(
        status_of(&app, &with(json!({"iat": t + 30}))).await.0,
        StatusCode::OK
    );
    let no_exp = sign(
        Algorithm::ES256,
        "ec256",
        None,
        &json!({"sub": "a", "team": "t"}),
    );
    assert_refused(&app, &no_exp, "no `exp` claim").await;

    let strict = pem_keys(&mock).auth(|a| a.leeway_secs = 0).spawn().await;
    assert_refused(&strict, &with(json!({"exp": t - 30})), "expired at").await;
    assert_refused(&strict, &with(json!({"nbf": t + 30})), "not valid before").await;
}

#[actix_web::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let mock = MockVidu::start().await;
    let app = pem_keys(&mock)
        .auth(|a| {
            a.issuer = "https://idp.example.com".into();
            a.audience = "vidu-gateway".into();
        })
        .spawn()
        .await;
    let t = now() + 600;
    let tok = |c: Value| sign(Algorithm::RS256, "rsa1", None, &c);
    let good = json!({"sub": "a", "team": "t", "exp": t, "iss": "https://idp.example.com", "aud": "vidu-gateway"});
    assert_eq!(status_of(&app, &tok(good.clone())).await.0, StatusCode::OK);
    let mut arr = good.clone();
    arr["aud"] = json!(["other", "vidu-gateway"]);
    assert_eq!(
        status_of(&app, &tok(arr)).await.0,
        StatusCode::OK,
        "aud array containing the audience"
    );
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.example.com");
    assert_refused(&app, &tok(wrong_iss), "issuer").await;
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!(["other"]);
    assert_refused(&app, &tok(wrong_aud), "audience").await;
    let mut no_aud = good;
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_refused(&app, &tok(no_aud), "audience").await;
}

fn b64(v: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

#[actix_web::test]
async fn alg_none_and_the_hs_rs_confusion_attack_are_refused() {
    let mock = MockVidu::start().await;
    let app = auth_config(&mock, |a| {
        a.algorithms = strings(&["RS256"]);
        a.public_key_files = vec![fix("rsa1.pub.pem")];
    })
    .spawn()
    .await;
    let payload = b64(claims().to_string().as_bytes());
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"None"}"#,
        r#"{"alg":"NONE"}"#,
    ] {
        let token = format!("{}.{payload}.", b64(header.as_bytes()));
        let (status, _, _) = status_of(&app, &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{header}");
    }
    // HS256 signed with the RSA public key's PEM bytes as the HMAC secret.
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(&pem("rsa1.pub.pem")),
    )
    .unwrap();
    assert_refused(&app, &forged, "not allowed").await;
    // Even when HS256 is allowed, the RSA key is never used as an HMAC secret.
    let app = auth_config(&mock, |a| {
        a.algorithms = strings(&["HS256", "RS256"]);
        a.public_key_files = vec![fix("rsa1.pub.pem")];
    })
    .spawn()
    .await;
    assert_refused(&app, &forged, "no configured key verifies HS256").await;
    assert!(mock.received().is_empty());
}

#[actix_web::test]
async fn an_unknown_kid_falls_back_to_keys_without_a_kid_only() {
    let mock = MockVidu::start().await;
    let app = pem_keys(&mock).spawn().await;
    let ok = sign(Algorithm::RS256, "rsa1", Some("some-kid"), &claims());
    assert_eq!(
        status_of(&app, &ok).await.0,
        StatusCode::OK,
        "PEM keys have no kid: tried for any kid"
    );
    let wrong = sign(Algorithm::RS256, "rsa2", Some("some-kid"), &claims());
    assert_refused(&app, &wrong, "signature").await;
}

#[actix_web::test]
async fn nested_claim_paths_and_array_teams_map_to_the_identity() {
    let mock = MockVidu::start().await;
    let app = pem_keys(&mock)
        .auth(|a| {
            a.user_claim = "preferred_username".into();
            a.team_claim = "org.teams".into();
            a.roles_claim = "realm_access.roles".into();
        })
        .spawn()
        .await;
    let c = json!({"preferred_username": "bob", "org": {"teams": ["design", "ops"]},
                   "realm_access": {"roles": ["user", "gw-admin"]}, "exp": now() + 600});
    let token = sign(Algorithm::ES256, "ec256", None, &c);
    let (status, _, body) = app.get("/gateway/v1/config", &token).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "admin through realm_access.roles: {body}"
    );
    let mut not_admin = c.clone();
    not_admin["realm_access"]["roles"] = json!(["user"]);
    let (status, _, _) = app
        .get(
            "/gateway/v1/config",
            &sign(Algorithm::ES256, "ec256", None, &not_admin),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// Where an IdP lets users name their own attributes, a top-level claim literally called `realm_access.roles`
/// must not stand in for the nested path (admin spoofing).
#[actix_web::test]
async fn a_literal_claim_named_like_a_dotted_path_is_not_the_nested_claim() {
    let mock = MockVidu::start().await;
    let app = pem_keys(&mock)
        .auth(|a| {
            a.team_claim = "org.team".into();
            a.roles_claim = "realm_access.roles".into();
        })
        .spawn()
        .await;
    let spoofed = json!({"sub": "mallory", "org": {"team": "t"}, "realm_access.roles": ["gw-admin"],
                         "realm_access": {"roles": ["user"]}, "exp": now() + 600});
    let (status, _, body) = app
        .get(
            "/gateway/v1/config",
            &sign(Algorithm::ES256, "ec256", None, &spoofed),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the literal claim beside the nested one: {body}"
    );
    let mut alone = spoofed.clone();
    alone.as_object_mut().unwrap().remove("realm_access");
    let (status, _, body) = app
        .get(
            "/gateway/v1/config",
            &sign(Algorithm::ES256, "ec256", None, &alone),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the literal claim alone: {body}"
    );
    let literal_team = json!({"sub": "mallory", "org.team": "finance", "exp": now() + 600});
    assert_refused(
        &app,
        &sign(Algorithm::ES256, "ec256", None, &literal_team),
        "no team claim `org.team`",
    )
    .await;
}

/// RFC 7515 §4.1.11: a recipient must refuse a JWS whose `crit` lists an extension it does not understand, and
/// the gateway understands none.
#[actix_web::test]
async fn a_token_with_a_crit_header_is_refused() {
    let mock = MockVidu::start().await;
    let app = pem_keys(&mock).spawn().await;
    for crit in [json!(["exp"]), json!(["b64"]), json!([]), Value::Null] {
        let mut header = Header::new(Algorithm::RS256);
        header.extras.insert("crit", crit.clone());
        let token =
            jsonwebtoken::encode(&header, &claims(), &private_key(Algorithm::RS256, "rsa1"))
                .unwrap();
        assert!(
            jsonwebtoken::decode_header(&token).is_ok(),
            "a well-formed header"
        );
        assert_refused(&app, &token, "crit").await;
        let (_, body, _) = status_of(&app, &token).await;
        assert!(
            body["message"].as_str().unwrap().contains("RFC 7515"),
            "{crit}: {body}"
        );
    }
    // The same token without `crit` is fine.
    let plain = sign(Algorithm::RS256, "rsa1", None, &claims());
    assert_eq!(status_of(&app, &plain).await.0, StatusCode::OK);
    assert_eq!(mock.received().len(), 1);
}

/// `auth.max_token_lifetime_secs` caps `exp − iat` (or `exp − now` without `iat`); unset, there is no cap.
#[actix_web::test]
async fn tokens_living_longer_than_the_configured_cap_are_refused() {
    let mock = MockVidu::start().await;
    let app = pem_keys(&mock)
        .auth(|a| {
            a.max_token_lifetime_secs = Some(3600);
            a.leeway_secs = 30;
        })
        .spawn()
        .await;
    let now = vidu_gateway::clock::Clock::now(&*app.clock).as_second();
    let token = |c: &Value| sign(Algorithm::ES256, "ec256", None, c);

    // exp − iat, whatever the time now.
    let day = json!({"sub": "a", "team": "t", "iat": now - 60, "exp": now - 60 + 86_400});
    let (status, body, headers) = status_of(&app, &token(&day)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("auth.max_token_lifetime_secs")
            && msg.contains("86400")
            && msg.contains("3600"),
        "names the key and both figures: {msg}"
    );
    assert!(
        header(&headers, "www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    let hour = json!({"sub": "a", "team": "t", "iat": now - 3000, "exp": now + 600});
    assert_eq!(
        status_of(&app, &token(&hour)).await.0,
        StatusCode::OK,
        "exactly the cap"
    );
    let over = json!({"sub": "a", "team": "t", "iat": now - 3001, "exp": now + 600});
    assert_eq!(
        status_of(&app, &token(&over)).await.0,
        StatusCode::UNAUTHORIZED,
        "one second over"
    );

    // Without iat: exp − now, with the leeway for the issuer's clock.
    let no_iat = json!({"sub": "a", "team": "t", "exp": now + 3600 + 30});
    assert_eq!(status_of(&app, &token(&no_iat)).await.0, StatusCode::OK);
    let two_hours = json!({"sub": "a", "team": "t", "exp": now + 7200});
    let (status, body, _) = status_of(&app, &token(&two_hours)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains("7200") && msg.contains("no `iat`"), "{msg}");

    // Unset: no cap.
    let uncapped = pem_keys(&mock).spawn().await;
    assert_eq!(status_of(&uncapped, &token(&day)).await.0, StatusCode::OK);
    assert_eq!(
        status_of(
            &uncapped,
            &token(&json!({"sub": "a", "team": "t", "exp": now + 365 * 86_400}))
        )
        .await
        .0,
        StatusCode::OK
    );
}

#[test]
fn a_zero_token_lifetime_cap_is_refused_at_load() {
    let Err(err) = TestConfig::new("http://127.0.0.1:9")
        .toml("[auth]\nmax_token_lifetime_secs = 0")
        .load()
    else {
        panic!("max_token_lifetime_secs = 0 was accepted");
    };
    let err = format!("{err:#}");
    assert!(err.contains("auth.max_token_lifetime_secs"), "{err}");
}

/// A create with a raw `Authorization` header value.
async fn create_with_authorization(
    app: &TestApp,
    authorization: &str,
) -> (StatusCode, Vec<(String, String)>, Value) {
    let mut res = app
        .client
        .post(format!("{}/ent/v2/img2video", app.url))
        .insert_header(("authorization", authorization))
        .insert_header(("content-type", "application/json"))
        .send_body(small_request().to_string())
        .await
        .unwrap();
    read(&mut res).await
}

/// Vidu's clients hard-code `Authorization: Token <key>`: with a company JWT as "the key", such a client works
/// after changing only its base URL and key. Same verification, same errors;
/// `WWW-Authenticate` still names Bearer.
#[actix_web::test]
async fn a_jwt_sent_with_the_vidu_token_scheme_is_treated_exactly_like_bearer() {
    let mock = MockVidu::start().await;
    let app = pem_keys(&mock).spawn().await;
    let good = sign(Algorithm::RS256, "rsa1", None, &claims());
    for scheme in ["Token", "token", "TOKEN", "Bearer"] {
        let (status, _, body) = create_with_authorization(&app, &format!("{scheme} {good}")).await;
        assert_eq!(status, StatusCode::OK, "{scheme}: {body}");
    }
    let sent = mock.received();
    assert_eq!(sent.len(), 4);
    for r in &sent {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Token {VIDU_KEY}").as_str()),
            "Vidu gets the enterprise key, never the caller's JWT"
        );
    }

    // The same refusal, word for word, whichever scheme carried the token.
    let forged = sign(Algorithm::RS256, "rsa2", None, &claims());
    let expired = sign(
        Algorithm::RS256,
        "rsa1",
        None,
        &json!({"sub": "a", "team": "t", "exp": now() - 3600}),
    );
    for token in [forged, expired, "not-a-jwt".to_owned()] {
        let (b_status, b_headers, b_body) =
            create_with_authorization(&app, &format!("Bearer {token}")).await;
        let (t_status, t_headers, t_body) =
            create_with_authorization(&app, &format!("Token {token}")).await;
        assert_eq!(b_status, StatusCode::UNAUTHORIZED, "{b_body}");
        assert_eq!(t_status, StatusCode::UNAUTHORIZED, "{t_body}");
        assert_envelope(t_status, &t_headers, &t_body, "Unauthorized");
        assert_eq!(t_body["message"], b_body["message"]);
        assert_eq!(
            header(&t_headers, "www-authenticate"),
            header(&b_headers, "www-authenticate")
        );
        let www = header(&t_headers, "www-authenticate").unwrap();
        assert!(www.starts_with("Bearer error=\"invalid_token\""), "{www}");
    }

    // Any other scheme: the message names both accepted ones; the challenge names Bearer.
    for value in ["Basic YWxpY2U6cHc=", "Tokens abc", "Token", "Token   "] {
        let (status, headers, body) = create_with_authorization(&app, value).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{value}: {body}");
        assert_envelope(status, &headers, &body, "Unauthorized");
        let msg = body["message"].as_str().unwrap();
        assert!(
            msg.contains("Bearer <token>") && msg.contains("Token <token>"),
            "{value}: {msg}"
        );
        assert!(!msg.contains("must use the Bearer scheme"), "{msg}");
        assert_eq!(header(&headers, "www-authenticate"), Some("Bearer"));
    }
    assert_eq!(mock.received().len(), 4, "no refused request reached Vidu");
}

#[actix_web::test]
async fn a_token_without_a_team_is_refused_naming_the_claim_unless_teams_are_optional() {
    let mock = MockVidu::start().await;
    let app = pem_keys(&mock)
        .auth(|a| a.team_claim = "grp".into())
        .spawn()
        .await;
    let c = json!({"sub": "a", "exp": now() + 600});
    assert_refused(
        &app,
        &sign(Algorithm::RS256, "rsa1", None, &c),
        "no team claim `grp`",
    )
    .await;
    let empty = json!({"sub": "a", "grp": "", "exp": now() + 600});
    assert_refused(
        &app,
        &sign(Algorithm::RS256, "rsa1", None, &empty),
        "no team claim",
    )
    .await;
    let app = pem_keys(&mock)
        .auth(|a| a.require_team = false)
        .spawn()
        .await;
    assert_eq!(
        status_of(&app, &sign(Algorithm::RS256, "rsa1", None, &c))
            .await
            .0,
        StatusCode::OK
    );
}

#[actix_web::test]
async fn an_oversized_token_is_refused_before_parsing() {
    let mock = MockVidu::start().await;
    let app = pem_keys(&mock).spawn().await;
    let mut c = claims();
    c["pad"] = json!("x".repeat(9000));
    assert_refused(
        &app,
        &sign(Algorithm::HS256, "hs", None, &c),
        "larger than 8192 bytes",
    )
    .await;
}

#[actix_web::test]
async fn auth_failures_are_counted_by_reason() {
    let mock = MockVidu::start().await;
    let app = pem_keys(&mock).spawn().await;
    let expired = sign(
        Algorithm::RS256,
        "rsa1",
        None,
        &json!({"sub": "a", "team": "t", "exp": now() - 3600}),
    );
    status_of(&app, &expired).await;
    status_of(&app, &sign(Algorithm::RS256, "rsa2", None, &claims())).await;
    let text = app.metrics_text().await;
    assert!(
        text.contains(r#"vidu_gateway_auth_failures_total{reason="expired"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"vidu_gateway_auth_failures_total{reason="bad_signature"} 1"#),
        "{text}"
    );
}

#[test]
fn the_token_command_refuses_when_only_public_keys_are_configured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        format!("[auth]\nalgorithms = [\"RS256\"]\npublic_key_files = [\"{FIX}/rsa1.pub.pem\"]\n"),
    )
    .unwrap();
    let (code, out, err) = run_cli(
        &[
            "token",
            "--config",
            path.to_str().unwrap(),
            "--sub",
            "a",
            "--team",
            "t",
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("no HS secret is configured"), "{err}");
}

#[test]
fn a_broken_public_key_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        format!("[auth]\nalgorithms = [\"RS256\"]\npublic_key_files = [\"{FIX}/README.md\"]\n"),
    )
    .unwrap();
    let (code, _, err) = run_cli(
        &["serve", "--config", path.to_str().unwrap()],
        &[("VIDU_GW__SERVER__LISTEN", "127.0.0.1:0")],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("auth.public_key_files") && err.contains("not a PEM public key"),
        "{err}"
    );
}

// ---- JWKS over HTTP ----

/// A loopback IdP serving a JWKS that the test can rotate, break and count.
struct Idp {
    url: String,
    jwks: Arc<Mutex<Option<Value>>>,
    fetches: Arc<AtomicUsize>,
}

fn jwk(alg: Algorithm, key: &str, kid: &str) -> Jwk {
    let mut j = Jwk::from_encoding_key(&private_key(alg, key), alg).unwrap();
    j.common.key_id = Some(kid.to_owned());
    j
}

fn set(keys: Vec<Jwk>) -> Value {
    serde_json::to_value(JwkSet { keys }).unwrap()
}

impl Idp {
    async fn start(initial: Option<Value>) -> Self {
        let jwks = Arc::new(Mutex::new(initial));
        let fetches = Arc::new(AtomicUsize::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let (j, f) = (jwks.clone(), fetches.clone());
        let server = HttpServer::new(move || {
            let (j, f) = (j.clone(), f.clone());
            App::new().route(
                "/jwks.json",
                web::get().to(move || {
                    let (j, f) = (j.clone(), f.clone());
                    async move {
                        f.fetch_add(1, Ordering::SeqCst);
                        match j.lock().unwrap().clone() {
                            Some(v) => HttpResponse::Ok().json(v),
                            None => HttpResponse::ServiceUnavailable().finish(),
                        }
                    }
                }),
            )
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        actix_web::rt::spawn(server);
        Self { url, jwks, fetches }
    }

    fn serve(&self, v: Option<Value>) {
        *self.jwks.lock().unwrap() = v;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn wait_ready(app: &TestApp) {
    for _ in 0..100 {
        let (status, _, _) = app.get_open("/readyz").await;
        if status == StatusCode::OK {
            return;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never ready");
}

/// Moves the gateway's clock past the least time between two JWKS fetches (no waiting).
fn past_the_refetch_cooldown(app: &TestApp) {
    app.clock
        .advance(SignedDuration::try_from(REFETCH_COOLDOWN).unwrap());
}

fn jwks_config(mock: &MockVidu, idp: &Idp) -> TestConfig {
    auth_config(mock, |a| {
        a.algorithms = strings(&["RS256", "ES256"]);
        a.jwks_url = Some(idp.url.clone());
        a.jwks_refresh_secs = 3600;
    })
}

#[actix_web::test]
async fn a_rotated_key_is_accepted_on_first_sight_and_forged_kids_do_not_hammer_the_idp() {
    let mock = MockVidu::start().await;
    let idp = Idp::start(Some(set(vec![jwk(Algorithm::RS256, "rsa1", "k1")]))).await;
    let app = jwks_config(&mock, &idp).spawn().await;
    wait_ready(&app).await;
    assert_eq!(idp.fetches(), 1);
    assert_eq!(
        status_of(&app, &sign(Algorithm::RS256, "rsa1", Some("k1"), &claims()))
            .await
            .0,
        StatusCode::OK
    );

    // The IdP rotates: k2 (an EC key) replaces k1. The first token with k2 triggers one refetch and passes.
    idp.serve(Some(set(vec![jwk(Algorithm::ES256, "ec256", "k2")])));
    past_the_refetch_cooldown(&app);
    let (status, body, _) = status_of(
        &app,
        &sign(Algorithm::ES256, "ec256", Some("k2"), &claims()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(idp.fetches(), 2);

    // A burst of forged kids: at most one more fetch within the cooldown.
    let before = idp.fetches();
    let forged: Vec<_> = (0..40)
        .map(|i| {
            let token = sign(
                Algorithm::ES256,
                "ec256",
                Some(&format!("forged-{i}")),
                &claims(),
            );
            let app = &app;
            async move { status_of(app, &token).await.0 }
        })
        .collect();
    let statuses = futures_util::future::join_all(forged).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED));
    assert!(
        idp.fetches() - before <= 1,
        "{} fetches for 40 forged kids",
        idp.fetches() - before
    );
    let (_, body, _) = status_of(
        &app,
        &sign(Algorithm::ES256, "ec256", Some("forged-x"), &claims()),
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("unknown key id"),
        "{body}"
    );
}

#[actix_web::test]
async fn an_idp_outage_keeps_the_last_good_keys_working() {
    let mock = MockVidu::start().await;
    let idp = Idp::start(Some(set(vec![jwk(Algorithm::RS256, "rsa1", "k1")]))).await;
    let app = jwks_config(&mock, &idp).spawn().await;
    wait_ready(&app).await;
    idp.serve(None); // the IdP now answers 503
    past_the_refetch_cooldown(&app);
    // An unknown kid triggers a refetch, which fails (the token is refused: no key has kid k9)…
    let before = idp.fetches();
    assert_refused(
        &app,
        &sign(Algorithm::RS256, "rsa1", Some("k9"), &claims()),
        "unknown key id",
    )
    .await;
    assert_eq!(idp.fetches(), before + 1);
    // …and the last good key still verifies.
    assert_eq!(
        status_of(&app, &sign(Algorithm::RS256, "rsa1", Some("k1"), &claims()))
            .await
            .0,
        StatusCode::OK
    );
    let (status, _, _) = app.get_open("/readyz").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "still ready with the last good keys"
    );
    let text = app.metrics_text().await;
    assert!(
        text.contains(r#"vidu_gateway_jwks_fetches_total{outcome="ok"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"vidu_gateway_jwks_fetches_total{outcome="http_status"} 1"#),
        "{text}"
    );
}

#[actix_web::test]
async fn start_up_with_the_idp_down_serves_401s_and_recovers_when_it_returns() {
    let mock = MockVidu::start().await;
    let idp = Idp::start(None).await;
    let app = jwks_config(&mock, &idp).spawn().await;
    // The gateway has asked the IdP once (and been refused).
    until(|| idp.fetches() >= 1).await;
    let (status, headers, body) = app.get_open("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_envelope(status, &headers, &body, "ServiceUnavailable");
    assert!(
        body["message"].as_str().unwrap().contains("not loaded yet"),
        "{body}"
    );
    assert_refused(
        &app,
        &sign(Algorithm::RS256, "rsa1", Some("k1"), &claims()),
        "not loaded yet",
    )
    .await;

    idp.serve(Some(set(vec![jwk(Algorithm::RS256, "rsa1", "k1")])));
    wait_ready(&app).await;
    assert_eq!(
        status_of(&app, &sign(Algorithm::RS256, "rsa1", Some("k1"), &claims()))
            .await
            .0,
        StatusCode::OK
    );
}

#[actix_web::test]
async fn a_jwks_file_is_a_key_source_too() {
    let mock = MockVidu::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(
        &path,
        set(vec![jwk(Algorithm::EdDSA, "ed25519", "file-k")]).to_string(),
    )
    .unwrap();
    let app = auth_config(&mock, |a| {
        a.algorithms = strings(&["EdDSA"]);
        a.jwks_file = Some(path.clone());
    })
    .spawn()
    .await;
    assert_eq!(
        status_of(
            &app,
            &sign(Algorithm::EdDSA, "ed25519", Some("file-k"), &claims())
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        status_of(&app, &sign(Algorithm::EdDSA, "ed25519", None, &claims()))
            .await
            .0,
        StatusCode::OK
    );
    assert_refused(
        &app,
        &sign(Algorithm::EdDSA, "ed25519", Some("other"), &claims()),
        "unknown key id",
    )
    .await;
}

#[actix_web::test]
async fn the_token_command_signs_with_a_private_key_for_public_key_gateways() {
    let mock = MockVidu::start().await;
    let app = pem_keys(&mock).spawn().await;
    for key in ["rsa1", "ec256", "ec384", "ed25519"] {
        let pem = format!("{FIX}/{key}.key.pem");
        let (code, out, err) = run_cli(
            &[
                "token",
                "--sub",
                "bench",
                "--team",
                "perf",
                "--private-key",
                &pem,
            ],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(status_of(&app, out.trim()).await.0, StatusCode::OK, "{key}");
    }
    let (code, _, err) = run_cli(
        &[
            "token",
            "--sub",
            "a",
            "--private-key",
            &format!("{FIX}/rsa1.pub.pem"),
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("not a PKCS#8 PEM private key"), "{err}");
}

#[actix_web::test]
async fn a_remembered_verification_still_expires_on_time() {
    let mock = MockVidu::start().await;
    let app = pem_keys(&mock).auth(|a| a.leeway_secs = 0).spawn().await;
    // On the gateway's clock, which started at spawn (the wall clock may be seconds ahead on a busy machine).
    let exp = vidu_gateway::clock::Clock::now(&*app.clock).as_second() + 60;
    let token = sign(
        Algorithm::ES256,
        "ec256",
        None,
        &json!({"sub": "a", "team": "t", "exp": exp}),
    );
    assert_eq!(status_of(&app, &token).await.0, StatusCode::OK);
    assert_eq!(
        status_of(&app, &token).await.0,
        StatusCode::OK,
        "verified once, remembered"
    );
    app.clock.advance(jiff::SignedDuration::from_secs(61));
    assert_refused(&app, &token, "expired at").await;
}

#[actix_web::test]
async fn a_remembered_verification_is_redone_after_the_jwks_changes() {
    let mock = MockVidu::start().await;
    let idp = Idp::start(Some(set(vec![jwk(Algorithm::RS256, "rsa1", "k1")]))).await;
    let app = jwks_config(&mock, &idp).spawn().await;
    wait_ready(&app).await;
    let token = sign(Algorithm::RS256, "rsa1", Some("k1"), &claims());
    assert_eq!(status_of(&app, &token).await.0, StatusCode::OK);
    // The IdP withdraws k1; the next fetch (triggered by an unknown kid) drops it, and the cached
    // verification of the k1 token no longer counts.
    idp.serve(Some(set(vec![jwk(Algorithm::ES256, "ec256", "k2")])));
    past_the_refetch_cooldown(&app);
    assert_eq!(
        status_of(
            &app,
            &sign(Algorithm::ES256, "ec256", Some("k2"), &claims())
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_refused(&app, &token, "unknown key id").await;
}
