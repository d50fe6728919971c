//! `POST /ent/v2/img2video` and `POST /gateway/v1/img2video/quote`: thin handlers over `crate::create`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;

use crate::app_state::{AppState, request_id};
use crate::auth::Identity;
use crate::body;
use crate::create::{self, Context};
use crate::error::GatewayError;
use crate::vidu::upstream::Upstream;

/// Size check, identity, content type, body: steps 1–2 of the flow (and the read of step 3).
async fn read_authenticated(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<(Identity, Bytes), GatewayError> {
    let limit = state.config.current().settings.server.max_body_bytes;
    let declared = body::check_declared_length(req, limit)?;
    let identity = state.authenticate(req).await?;
    body::require_json_content_type(req)?;
    let bytes = body::read(payload, declared, limit).await?;
    Ok((identity, bytes))
}

fn prefer_never(req: &HttpRequest) -> bool {
    create::prefers_never_off_peak(req.headers().get("prefer").and_then(|v| v.to_str().ok()))
}

pub async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
) -> Result<HttpResponse, GatewayError> {
    let (identity, bytes) = read_authenticated(&req, payload, &state).await?;
    let config = state.config.current();
    let rid = request_id(&req);
    let ctx = Context {
        settings: &config.settings,
        store: &state.store,
        metrics: &state.metrics,
        now: state.clock.now(),
        request_id: &rid,
    };
    let admitted = match create::admit(&ctx, &identity, &bytes, prefer_never(&req)) {
        Ok(a) => a,
        Err(refused) => return Ok(refused.into_response()),
    };
    drop(bytes);
    let headers = create::admission_headers(&admitted.prepared, &admitted.grant);
    let timeout_ms = config.settings.upstream.request_timeout_ms;
    let answer = create::forward_admitted(
        upstream,
        state.store.clone(),
        state.metrics.clone(),
        &identity,
        admitted,
        rid,
    )
    .await;
    let mut res = match answer {
        Ok(a) => create::upstream_response(a),
        Err(e) => actix_web::ResponseError::error_response(&super::upstream_error(e, timeout_ms)),
    };
    for (name, value) in headers {
        res.headers_mut().insert(name, value);
    }
    Ok(res)
}

pub async fn quote(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let (identity, bytes) = read_authenticated(&req, payload, &state).await?;
    let config = state.config.current();
    let rid = request_id(&req);
    let ctx = Context {
        settings: &config.settings,
        store: &state.store,
        metrics: &state.metrics,
        now: state.clock.now(),
        request_id: &rid,
    };
    let verdict = create::quote(&ctx, &identity, &bytes, prefer_never(&req))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(verdict))
}
