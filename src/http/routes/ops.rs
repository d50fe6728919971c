//! `/healthz`, `/readyz`, `/metrics`: for load balancers and Prometheus; no token needed.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::http::app_state::AppState;
use crate::http::error::GatewayError;
use crate::metrics::Metrics;

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
    if let Err(why) = state.store.health().await {
        state.metrics.ready.set(0);
        return Err(GatewayError::ServiceUnavailable {
            message: format!("the state backend is unavailable: {why}"),
            retry_after_secs: 5,
        });
    }
    state.metrics.ready.set(1);
    Ok(HttpResponse::Ok().json(json!({
        "status": "ready",
        "config_version": config.version,
        "upstream": config.settings.upstream.mode,
    })))
}

pub async fn metrics(metrics: web::Data<Arc<Metrics>>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics.render())
}
