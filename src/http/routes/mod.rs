//! HTTP routes: thin handlers that authenticate, call the domain, and map the result.

pub mod audit;
pub mod gateway;
pub mod img2video;
pub mod lifecycle;
pub mod ops;
pub mod tasks;

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;

use crate::forward::upstream::{Endpoint, Upstream, UpstreamError, UpstreamRequest};
use crate::http::app_state::{AppState, request_id};
use crate::http::error::GatewayError;

/// Every route of the main listener.
pub fn configure(cfg: &mut web::ServiceConfig, metrics_here: bool) {
    cfg.service(web::resource("/ent/v2/img2video").route(web::post().to(img2video::create)))
        .service(
            web::resource("/ent/v2/tasks/{id}/creations").route(web::get().to(tasks::creations)),
        )
        .service(web::resource("/ent/v2/tasks/{id}/cancel").route(web::post().to(tasks::cancel)))
        .service(web::resource("/ent/v2/credits").route(web::get().to(gateway::credits)))
        .service(
            web::resource("/gateway/v1/img2video/quote").route(web::post().to(img2video::quote)),
        )
        .service(web::resource("/gateway/v1/usage").route(web::get().to(gateway::usage)))
        .service(web::resource("/gateway/v1/config").route(web::get().to(gateway::config)))
        .service(web::resource("/gateway/v1/audit").route(web::get().to(audit::audit)))
        .service(web::resource("/gateway/v1/tasks").route(web::get().to(lifecycle::tasks)))
        .service(
            web::resource(lifecycle::CALLBACK_PATH).route(web::post().to(lifecycle::vidu_callback)),
        )
        .service(
            web::resource("/gateway/v1/reservations").route(web::get().to(lifecycle::reservations)),
        )
        .service(
            web::resource("/gateway/v1/reservations/{id}/settle")
                .route(web::post().to(lifecycle::settle)),
        )
        .service(
            web::resource("/gateway/v1/reservations/{id}/release")
                .route(web::post().to(lifecycle::release)),
        )
        .service(web::resource("/healthz").route(web::get().to(ops::healthz)))
        .service(web::resource("/readyz").route(web::get().to(ops::readyz)));
    if metrics_here {
        cfg.service(web::resource("/metrics").route(web::get().to(ops::metrics)));
    }
}

/// A query string the handler's parameters cannot be read from (`?user=a&user=b`, an unknown parameter type): a
/// 400 that says what is wrong with the query, not with the body.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, req| {
        GatewayError::BadRequest(format!(
            "the query string of {} cannot be read ({err}): send each parameter at most once, e.g. ?user=alice",
            req.path()
        ))
        .into()
    })
}

/// Unknown path: 404 `NotFound` in the envelope.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, GatewayError> {
    Err(GatewayError::NotFound(format!(
        "no route for {} {}: the gateway serves /ent/v2/img2video, /ent/v2/tasks/{{id}}/creations, \
         /ent/v2/tasks/{{id}}/cancel, /ent/v2/credits and /gateway/v1/* (tasks, usage, reservations, quote, config, audit, callbacks/vidu)",
        req.method(),
        req.path()
    )))
}

/// Sends one call to Vidu; a failed exchange is the caller-facing error.
pub async fn send(
    state: &AppState,
    upstream: &Upstream,
    req: &HttpRequest,
    endpoint: Endpoint,
    method: Method,
    path: String,
    body: Bytes,
) -> Result<crate::forward::upstream::UpstreamResponse, GatewayError> {
    let call = UpstreamRequest {
        endpoint,
        method,
        path,
        body,
        request_id: request_id(req),
    };
    let timeout_ms = state.config.current().settings.upstream.request_timeout_ms;
    upstream
        .send(call, &state.metrics)
        .await
        .map_err(|e| upstream_error(&e, timeout_ms))
}

/// The caller-facing error of a failed upstream call.
pub fn upstream_error(e: &UpstreamError, timeout_ms: u64) -> GatewayError {
    match e {
            UpstreamError::Timeout => GatewayError::UpstreamTimeout { timeout_ms },
            UpstreamError::Connect(_) => GatewayError::UpstreamUnavailable(
                "Vidu is unreachable (connection failed before the request was sent); nothing was created — \
                 retry later"
                    .into(),
            ),
            UpstreamError::Broken(_) => GatewayError::UpstreamUnavailable(
                "the connection to Vidu broke after the request was sent; the task may have been created — \
                 check before retrying"
                    .into(),
            ),
    }
}
