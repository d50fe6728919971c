//! `POST /ent/v2/img2video` and `POST /gateway/v1/img2video/quote`: thin handlers over `crate::flow` (and, for a
//! create's `Idempotency-Key`, `crate::idempotency`; the quote ignores the header).

use std::sync::Arc;

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;

use crate::auth::Identity;
use crate::config::LoadedConfig;
use crate::flow::{self, Context};
use crate::forward::upstream::Upstream;
use crate::http::app_state::{AppState, request_id};
use crate::http::error::GatewayError;
use crate::http::responses;
use crate::idempotency::{self, Held, Keeper};
use crate::read;

/// What both handlers start from: the configuration in force for the whole request (read once), the caller,
/// the body (steps 1–2 of the flow and the read of step 3), and the request id.
struct Started {
    config: Arc<LoadedConfig>,
    identity: Identity,
    bytes: Bytes,
    request_id: String,
}

impl Started {
    async fn read(
        req: &HttpRequest,
        payload: web::Payload,
        state: &AppState,
    ) -> Result<Self, GatewayError> {
        let config = state.config.current();
        let limit = config.settings.server.max_body_bytes;
        let declared = read::check_declared_length(req, limit)?;
        let identity = state.authenticate(req).await?;
        read::require_json_content_type(req)?;
        let bytes = read::read(payload, declared, limit).await?;
        Ok(Self {
            config,
            identity,
            bytes,
            request_id: request_id(req),
        })
    }

    fn context<'a>(&'a self, state: &'a AppState) -> Context<'a> {
        Context {
            settings: &self.config.settings,
            store: &state.store,
            metrics: &state.metrics,
            now: state.clock.now(),
            request_id: &self.request_id,
        }
    }
}

fn prefer_never(req: &HttpRequest) -> bool {
    flow::prefers_never_off_peak(req.headers().get("prefer").and_then(|v| v.to_str().ok()))
}

pub async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
) -> Result<HttpResponse, GatewayError> {
    let started = Started::read(&req, payload, &state).await?;
    let key = idempotency::key_of(
        req.headers()
            .get_all(idempotency::HEADER)
            .map(HeaderValue::as_bytes),
    )
    .map_err(GatewayError::BadRequest)?;
    let ctx = started.context(&state);
    let held = match idempotency::begin(
        ctx.store,
        ctx.metrics,
        ctx.settings,
        &started.identity.user,
        key,
        &started.bytes,
    )
    .await
    {
        Ok(held) => held,
        Err(stopped) => return Ok(responses::stopped(stopped)),
    };
    let admitted =
        match flow::admit(&ctx, &started.identity, &started.bytes, prefer_never(&req)).await {
            Ok(a) => a,
            Err(refused) => {
                if let Some(held) = held {
                    held.abandon().await;
                }
                return Ok(responses::refused_response(refused));
            }
        };
    let Started {
        config,
        identity,
        bytes,
        request_id,
    } = started;
    // A rewritten body is a new buffer: the caller's can go before the upstream call.
    drop(bytes);
    let headers = responses::admission_headers(&admitted.decided);
    let timeout_ms = config.settings.upstream.request_timeout_ms;
    let keeper = held.and_then(|held| keeper(held, &headers, &request_id, timeout_ms));
    let answer = flow::forward_admitted(
        upstream.into_inner(),
        state.store.clone(),
        state.metrics.clone(),
        &identity,
        admitted,
        request_id,
        keeper,
    )
    .await;
    let mut res = match answer {
        Ok(a) => responses::upstream_response(a),
        Err(e) => actix_web::ResponseError::error_response(&super::upstream_error(&e, timeout_ms)),
    };
    for (name, value) in headers {
        res.headers_mut().insert(name, value);
    }
    Ok(res)
}

/// The claim of a create about to be forwarded, with the way to render its answer exactly as the caller gets it
/// (the same status, headers and body as the response `create` builds from it) for a retry to replay.
fn keeper(
    held: Held,
    headers: &[(HeaderName, HeaderValue)],
    request_id: &str,
    timeout_ms: u64,
) -> Option<Keeper> {
    let (headers, request_id) = (headers.to_vec(), request_id.to_owned());
    held.keeper(Box::new(move |result| {
        let answer = result
            .as_ref()
            .map_err(|e| super::upstream_error(e, timeout_ms));
        responses::kept_answer(answer, &headers, &request_id)
    }))
}

pub async fn quote(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let started = Started::read(&req, payload, &state).await?;
    let verdict = flow::quote(
        &started.context(&state),
        &started.identity,
        &started.bytes,
        prefer_never(&req),
    )
    .await
    .map_err(GatewayError::Validation)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(verdict))
}
