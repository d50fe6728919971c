//! `/healthz`, `/readyz`, `/metrics`: for load balancers and Prometheus; no token needed.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::app_state::AppState;
use crate::metrics::Metrics;

/// The process is alive and answering.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Configuration loaded and every dependency the gateway must consult reachable.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let config = state.config.current();
    state.metrics.ready.set(1);
    HttpResponse::Ok().json(json!({
        "status": "ready",
        "config_version": config.version,
        "upstream": config.settings.upstream.mode,
    }))
}

pub async fn metrics(metrics: web::Data<Arc<Metrics>>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics.render())
}
