//! `/healthz`, `/readyz`, `/metrics`: for load balancers and Prometheus; and `/gateway/v1/openapi.json`, the API
//! description. No token needed.

use std::sync::Arc;

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::config::{OnUnavailable, StateBackend, UpstreamMode};
use crate::http::app_state::AppState;
use crate::http::error::GatewayError;
use crate::http::openapi::{ApiDocument, Error503, GATEWAY, OPERATIONS};
use crate::metrics::Metrics;
use crate::state::{Store, StoreError};

/// The answer of `GET /healthz`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

/// The answer of `GET /readyz` when the replica takes traffic.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready`, or `degraded`: the state backend is unreachable and `state.on_unavailable = "fail_open"` admits
    /// without limits.
    pub status: &'static str,
    /// The version of the configuration in force.
    pub config_version: String,
    /// `upstream.mode`.
    pub upstream: UpstreamMode,
    pub state: StateView,
    pub replicas: ReplicasView,
}

/// The state backend, as `/readyz` sees it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StateView {
    pub backend: StateBackend,
    /// Where the redis backend points, without credentials (`redis://host:port/db`); `null` on memory.
    pub redis: Option<String>,
    pub reachable: bool,
    pub on_unavailable: OnUnavailable,
    /// Requests admitted without the backend (`fail_open`) not yet written back to it.
    pub spool_depth: u64,
}

/// The replicas sharing the backend, as the last heartbeat saw them.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ReplicasView {
    /// This replica's id (unique per process).
    pub id: String,
    /// Replica id → the config version it runs; `null` before the first heartbeat.
    pub versions: Option<BTreeMap<String, String>>,
    /// Whether the live replicas run different configurations.
    pub disagree: bool,
}

/// The process is alive and answering.
#[utoipa::path(get, path = "/healthz", tag = OPERATIONS, security(()),
    responses((status = 200, description = "Alive (the liveness probe).", body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Configuration loaded and every dependency the gateway must consult reachable.
///
/// The readiness probe: 503 while the JWKS has not been fetched or the state backend cannot be reached (under
/// `state.on_unavailable = "fail_open"` the replica keeps serving and says `degraded`).
#[utoipa::path(get, path = "/readyz", tag = OPERATIONS, security(()),
    responses(
        (status = 200, description = "Ready, or `degraded`.", body = Readiness),
        (status = 503, response = Error503),
    ))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, GatewayError> {
    let config = state.config.current();
    if let Some(why) = state.auth().jwks().and_then(|j| j.not_ready()) {
        state.metrics.ready.set(0);
        return Err(GatewayError::ServiceUnavailable {
            message: why,
            retry_after_secs: 1,
        });
    }
    let st = &config.settings.state;
    let (status, reachable) = match state.store.health().await {
        Ok(()) => ("ready", true),
        // A backend that cannot be reached under `fail_open`: the replica keeps serving on purpose, without
        // limits; it says so instead of leaving the load balancer's rotation.
        Err(StoreError::Unreachable(_) | StoreError::Timeout { .. })
            if st.on_unavailable == OnUnavailable::FailOpen =>
        {
            ("degraded", false)
        }
        Err(why) => {
            state.metrics.ready.set(0);
            return Err(GatewayError::ServiceUnavailable {
                message: format!(
                    "the state backend ({}) is unavailable: {why}",
                    match st.backend {
                        StateBackend::Memory => "memory",
                        StateBackend::Redis => "redis",
                    }
                ),
                retry_after_secs: 5,
            });
        }
    };
    state.metrics.ready.set(i64::from(reachable));
    if reachable {
        // A fresh view for whoever asks (the loop beats every few seconds regardless).
        state
            .replicas
            .beat(state.store.as_ref(), &state.config, &state.metrics)
            .await;
    }
    let peers = state.replicas.latest();
    Ok(HttpResponse::Ok().json(Readiness {
        status,
        config_version: config.version.clone(),
        upstream: config.settings.upstream.mode,
        state: StateView {
            backend: st.backend,
            redis: (st.backend == StateBackend::Redis)
                .then(|| redis_endpoint(st.redis_url.expose())),
            reachable,
            on_unavailable: st.on_unavailable,
            spool_depth: state.store.spool_depth().unwrap_or(0),
        },
        replicas: ReplicasView {
            id: state.replicas.id().to_owned(),
            disagree: peers.as_ref().is_some_and(|p| p.disagree()),
            versions: peers.map(|p| p.versions),
        },
    }))
}

/// This API description (OpenAPI 3.1).
///
/// Generated from the handlers' own types and annotations, built once at start: every route this listener serves,
/// the error envelope with its reasons, the auth schemes and the gateway's headers. No token: it describes the
/// API, it holds nothing of anyone's.
#[utoipa::path(get, path = "/gateway/v1/openapi.json", tag = GATEWAY, security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document.", body = Object,
        content_type = "application/json")))]
pub async fn openapi(doc: web::Data<ApiDocument>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.json())
}

/// `scheme://host:port/db` of a Redis URL: user name and password left out.
fn redis_endpoint(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}:{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().unwrap_or(6379),
            u.path()
        ),
        Err(_) => "(not a URL)".into(),
    }
}

/// Prometheus/OpenMetrics text.
///
/// Served here unless `server.metrics_listen` puts it on a listener of its own (then this listener answers 404
/// and this description leaves it out). Protect it by network.
#[utoipa::path(get, path = "/metrics", tag = OPERATIONS, security(()),
    responses((status = 200, description = "Every metric family (prefix `vidu_gateway_`).", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
pub async fn metrics(
    metrics: web::Data<Arc<Metrics>>,
    store: web::Data<Arc<dyn Store>>,
) -> HttpResponse {
    // Read from the backend now: every replica reports the same running tasks. A backend that does not answer
    // leaves the last figures.
    match store.running().await {
        Ok(now) => metrics.set_running(&now),
        Err(e) => tracing::debug!(error = %e, "running tasks not read for /metrics"),
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics.render())
}

#[cfg(test)]
mod tests {
    use super::redis_endpoint;

    #[test]
    fn a_redis_endpoint_never_shows_credentials() {
        assert_eq!(
            redis_endpoint("rediss://user:s3cret@redis.internal:6380/2"),
            "rediss://redis.internal:6380/2"
        );
        assert_eq!(
            redis_endpoint("redis://:pw@10.0.0.5/0"),
            "redis://10.0.0.5:6379/0"
        );
        assert_eq!(redis_endpoint("not a url with s3cret"), "(not a URL)");
    }
}
