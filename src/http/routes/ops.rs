//! `/healthz`, `/readyz`, `/metrics`: for load balancers and Prometheus; no token needed.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::config::{OnUnavailable, StateBackend};
use crate::http::app_state::AppState;
use crate::http::error::GatewayError;
use crate::metrics::Metrics;
use crate::state::{Store, StoreError};

/// The process is alive and answering.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Configuration loaded and every dependency the gateway must consult reachable.
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
    Ok(HttpResponse::Ok().json(json!({
        "status": status,
        "config_version": config.version,
        "upstream": config.settings.upstream.mode,
        "state": {
            "backend": st.backend,
            // Where the redis backend points, without credentials (`redis://host:port/db`).
            "redis": (st.backend == StateBackend::Redis).then(|| redis_endpoint(st.redis_url.expose())),
            "reachable": reachable,
            "on_unavailable": st.on_unavailable,
            // Requests admitted without the backend (fail_open) not yet written back to it.
            "spool_depth": state.store.spool_depth().unwrap_or(0),
        },
        // The replicas sharing the backend, as the last heartbeat saw them: replica id → config version.
        "replicas": {
            "id": state.replicas.id(),
            "versions": peers.as_ref().map(|p| &p.versions),
            "disagree": peers.as_ref().is_some_and(|p| p.disagree()),
        },
    })))
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
