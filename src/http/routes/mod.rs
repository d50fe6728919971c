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
use utoipa_actix_web::AppExt as _;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::forward::upstream::{Endpoint, Upstream, UpstreamError, UpstreamRequest};
use crate::http::app_state::{AppState, request_id};
use crate::http::error::GatewayError;
use crate::http::route::route;

/// Every route of the main listener, each served on the path and method of its handler's `#[utoipa::path]` and
/// described by it (`http::route`): a route is added here, with its annotation, or not at all (`ServiceConfig`
/// takes only described services).
pub fn configure(cfg: &mut ServiceConfig<'_>, metrics_here: bool) {
    cfg.service(route(img2video::create, img2video::__path_create))
        .service(route(tasks::creations, tasks::__path_creations))
        .service(route(tasks::cancel, tasks::__path_cancel))
        .service(route(gateway::credits, gateway::__path_credits))
        .service(route(img2video::quote, img2video::__path_quote))
        .service(route(gateway::usage, gateway::__path_usage))
        .service(route(gateway::config, gateway::__path_config))
        .service(route(audit::audit, audit::__path_audit))
        .service(route(lifecycle::tasks, lifecycle::__path_tasks))
        .service(route(
            lifecycle::vidu_callback,
            lifecycle::__path_vidu_callback,
        ))
        .service(route(
            lifecycle::reservations,
            lifecycle::__path_reservations,
        ))
        .service(route(lifecycle::settle, lifecycle::__path_settle))
        .service(route(lifecycle::release, lifecycle::__path_release))
        .service(route(ops::openapi, ops::__path_openapi))
        .service(route(ops::healthz, ops::__path_healthz))
        .service(route(ops::readyz, ops::__path_readyz));
    if metrics_here {
        cfg.service(metrics_route());
    }
}

/// `GET /metrics`, on the main listener or on its own (`server.metrics_listen`).
pub fn metrics_route() -> impl actix_web::dev::HttpServiceFactory + utoipa_actix_web::OpenApiFactory
{
    route(ops::metrics, ops::__path_metrics)
}

/// What [`configure`] serves, as its annotations describe it (`http::openapi` completes it).
pub fn described(metrics_here: bool) -> utoipa::openapi::OpenApi {
    actix_web::App::new()
        .into_utoipa_app()
        .configure(|cfg| configure(cfg, metrics_here))
        .split_for_parts()
        .1
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
         /ent/v2/tasks/{{id}}/cancel, /ent/v2/credits and /gateway/v1/* (tasks, usage, reservations, quote, config, audit, callbacks/vidu)\
         ; GET /gateway/v1/openapi.json describes every route",
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
