//! The API description cannot drift from what is served: `GET /gateway/v1/openapi.json` (no token) documents
//! exactly the method and path pairs the running gateway answers — probed from outside — and the README's error
//! table names exactly the reasons it documents.

use std::collections::BTreeSet;
use std::path::Path;

use actix_web::http::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{MockVidu, TestApp, header, read};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every method a route could be added with.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// `(METHOD, path template)` of every operation the document describes.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(|m| (m.to_ascii_uppercase(), path.clone()))
        })
        .collect()
}

/// A concrete path for a template: every `{…}` segment filled in (`/tasks/{id}/cancel` → `/tasks/probe-1/cancel`).
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|s| if s.starts_with('{') { "probe-1" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether a documented template names this concrete path.
fn names(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| t == p || (t.starts_with('{') && t.ends_with('}')))
}

/// Whether the gateway serves `method path`: anything but the router's own answers — 404 `NotFound` (no route has
/// the path) and 405 (a route has it, with another method). Sent without a token or body: a served route answers
/// before doing anything (401, or the probe's own answer), so probing changes nothing.
async fn serves(app: &TestApp, method: &Method, path: &str) -> bool {
    let mut res = app
        .client
        .request(method.clone(), format!("{}{path}", app.url))
        .send()
        .await
        .unwrap();
    let (status, _, body) = read(&mut res).await;
    let routed_away = (status == StatusCode::NOT_FOUND && body["reason"] == "NotFound")
        || status == StatusCode::METHOD_NOT_ALLOWED;
    !routed_away
}

/// Every string literal in `src/` that looks like a path (`"/…"` of path characters only): where a route added
/// outside the description would have to name its path. Probed with every method beside the documented paths.
fn path_literals() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (at, _) in text.match_indices("\"/") {
                    let rest = &text[at + 1..];
                    let Some(end) = rest.find('"') else { continue };
                    let literal = &rest[..end];
                    let pathlike = literal.len() > 1
                        && !literal.contains("//")
                        && literal
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"/_.-{}:".contains(&b));
                    if pathlike {
                        out.insert(literal.to_owned());
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&Path::new(ROOT).join("src"), &mut out);
    out
}

async fn description(app: &TestApp) -> Value {
    let (status, headers, doc) = app.get_open("/gateway/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert!(header(&headers, "x-request-id").is_some());
    assert_eq!(doc["openapi"], "3.1.0");
    doc
}

/// The drift test: a route served but not described, or described but not served, fails it — whether it was
/// added in `routes::configure` or anywhere else in `src/` (the App in `startup.rs`, a `map`/`route` around the
/// described table). Its path only has to appear as a literal somewhere under `src/`, as every route's does.
#[actix_web::test]
async fn the_description_documents_exactly_the_routes_served() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let doc = description(&app).await;
    let described = documented(&doc);
    assert!(described.len() >= 16, "{described:?}");

    let mut not_served = Vec::new();
    for (method, template) in &described {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        if !serves(&app, &method, &concrete(template)).await {
            not_served.push(format!("{method} {template}"));
        }
    }
    assert!(
        not_served.is_empty(),
        "described in /gateway/v1/openapi.json but not served: {not_served:?}"
    );

    let literals = path_literals();
    assert!(literals.contains("/healthz"), "{literals:?}");
    let candidates: BTreeSet<String> = described
        .iter()
        .map(|(_, t)| concrete(t))
        .chain(literals.iter().map(|l| concrete(l)))
        .collect();
    let mut not_described = Vec::new();
    for path in &candidates {
        for method in &METHODS {
            let is_described = described
                .iter()
                .any(|(m, t)| m == method.as_str() && names(t, path));
            if !is_described && serves(&app, method, path).await {
                not_described.push(format!("{method} {path}"));
            }
        }
    }
    assert!(
        not_described.is_empty(),
        "served but not described in /gateway/v1/openapi.json (annotate the handler with #[utoipa::path] and \
         register it with http::route::route in routes::configure): {not_described:?}"
    );
    assert!(mock.received().is_empty(), "probing reached Vidu");
}

/// `server.metrics_listen` moves `/metrics` off the main listener: the description follows it.
#[actix_web::test]
async fn the_description_follows_where_metrics_are_served() {
    let mock = MockVidu::start().await;
    let on_main = TestApp::builder(&mock).spawn().await;
    assert!(description(&on_main).await["paths"]["/metrics"]["get"].is_object());

    let apart = TestApp::builder(&mock)
        .server(|s| s.metrics_listen = Some("127.0.0.1:0".into()))
        .spawn()
        .await;
    let doc = description(&apart).await;
    assert!(doc["paths"].get("/metrics").is_none());
    assert!(!serves(&apart, &Method::GET, "/metrics").await);
    assert!(doc["paths"]["/healthz"]["get"].is_object());
}

/// The same bytes every time, no token needed, even with a token that does not verify.
#[actix_web::test]
async fn the_description_needs_no_token_and_is_the_same_every_time() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let first = description(&app).await;
    let (status, _, again) = app.get("/gateway/v1/openapi.json", "not-a-jwt").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first, again);
    let reasons = &first["components"]["schemas"]["ErrorEnvelope"]["properties"]["reason"]["enum"];
    assert!(
        reasons
            .as_array()
            .unwrap()
            .contains(&Value::from("CreditBudgetExhausted"))
    );
}

/// README's error table and the description name the same reasons.
#[actix_web::test]
async fn the_readme_error_table_names_the_described_reasons() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock).spawn().await;
    let doc = description(&app).await;
    let described: BTreeSet<String> =
        doc["components"]["schemas"]["ErrorEnvelope"]["properties"]["reason"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect();
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let errors = readme
        .split("\n## Errors\n")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let mut listed = BTreeSet::new();
    for row in errors
        .lines()
        .filter(|l| l.starts_with("| 4") || l.starts_with("| 5"))
    {
        let reasons = row.split('|').nth(2).unwrap();
        listed.extend(reasons.split('`').skip(1).step_by(2).map(str::to_owned));
    }
    assert_eq!(
        listed, described,
        "README.md § Errors and the description's reasons"
    );
    assert!(
        readme.contains("/gateway/v1/openapi.json"),
        "README links the description"
    );
}
