//! bench/floor.rs - the floor: a bare actix-web 4 + awc 3 reverse proxy, measured by bench/run.sh beside the
//! gateway on the same harness and layout (one worker, mimalloc, the same HTTP stack the gateway forwards with).
//!
//!     cargo build --release --example floor
//!     target/release/examples/floor [LISTEN [UPSTREAM]]
//!
//! LISTEN (else `FLOOR_LISTEN`, else 127.0.0.1:18090) is the address it serves on; UPSTREAM (else `UPSTREAM_URL`,
//! which the harness exports, else http://127.0.0.1:18081) the base URL it forwards to. `FLOOR_API_KEY` (default the
//! benchmark's dummy key) is sent as `Authorization: Token <key>`, `FLOOR_WORKERS` (default 1) sets the workers.
//!
//! Every POST, on any path: read the whole body (up to 20 MiB), send it to UPSTREAM + the path (and query) with the
//! `Authorization: Token <key>` header and the request's Content-Type, answer with the upstream's status,
//! Content-Type and body. Nothing else: no auth, validation, admission, ledger, logging or metrics. What the gateway
//! costs beyond this is its own code; what this costs is actix-web + awc.

use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The largest request body read (the gateway's benchmark config: `server.max_body_bytes` 20 MiB).
const MAX_BODY: usize = 20 * 1024 * 1024;
/// The largest upstream answer read.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

struct Upstream {
    client: awc::Client,
    base: String,
    authorization: HeaderValue,
}

async fn forward(
    req: HttpRequest,
    body: web::Bytes,
    up: web::Data<Upstream>,
) -> actix_web::Result<HttpResponse> {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut builder = up
        .client
        .post(format!("{}{}", up.base, target))
        .insert_header((header::AUTHORIZATION, up.authorization.clone()));
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        builder = builder.insert_header((header::CONTENT_TYPE, ct.clone()));
    }
    let mut res = builder
        .send_body(body)
        .await
        .map_err(actix_web::error::ErrorBadGateway)?;
    let answer = res
        .body()
        .limit(MAX_ANSWER)
        .await
        .map_err(actix_web::error::ErrorBadGateway)?;
    let mut out = HttpResponse::build(res.status());
    if let Some(ct) = res.headers().get(header::CONTENT_TYPE) {
        out.insert_header((header::CONTENT_TYPE, ct.clone()));
    }
    Ok(out.body(answer))
}

fn setting(arg: Option<String>, env: &str, default: &str) -> String {
    arg.or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| default.to_owned())
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    // One rustls provider, as the gateway installs it (awc is built with rustls; plain HTTP here).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let listen = setting(args.next(), "FLOOR_LISTEN", "127.0.0.1:18090");
    let base = setting(args.next(), "UPSTREAM_URL", "http://127.0.0.1:18081")
        .trim_end_matches('/')
        .to_owned();
    let key = setting(None, "FLOOR_API_KEY", "bench-enterprise-key-not-a-secret");
    let workers: usize = setting(None, "FLOOR_WORKERS", "1")
        .parse()
        .context("FLOOR_WORKERS is not a number")?;
    let authorization = HeaderValue::from_str(&format!("Token {key}"))
        .context("FLOOR_API_KEY: not a header value")?;
    HttpServer::new(move || {
        // awc's client is not Send: one per worker, built in the worker.
        let client = awc::Client::builder()
            .connector(awc::Connector::new().limit(256))
            .timeout(Duration::from_secs(30))
            .disable_redirects()
            .no_default_headers()
            .finish();
        App::new()
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .app_data(web::Data::new(Upstream {
                client,
                base: base.clone(),
                authorization: authorization.clone(),
            }))
            .route("/{tail:.*}", web::post().to(forward))
    })
    .workers(workers)
    .bind(&listen)
    .with_context(|| format!("cannot listen on {listen}"))?
    .run()
    .await
    .context("server")
}
