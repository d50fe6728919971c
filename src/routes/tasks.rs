//! `GET /ent/v2/tasks/{id}/creations` and `POST /ent/v2/tasks/{id}/cancel`, forwarded to Vidu.

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};

use super::forward;
use crate::app_state::AppState;
use crate::body;
use crate::error::GatewayError;
use crate::vidu::upstream::{Endpoint, Upstream};

/// Largest body accepted on cancel (Vidu's cancel takes at most a small JSON object).
const MAX_CANCEL_BODY: usize = 64 * 1024;

/// A task id as it may appear in a path: 1–64 of `[A-Za-z0-9_-]`. Anything else cannot be a Vidu task.
fn task_id(raw: &str) -> Result<&str, GatewayError> {
    let ok = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(raw)
    } else {
        Err(GatewayError::TaskNotFound)
    }
}

pub async fn creations(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
) -> Result<HttpResponse, GatewayError> {
    let _identity = state.authenticate(&req).await?;
    let id = task_id(&path)?;
    forward(
        &state,
        &upstream,
        &req,
        Endpoint::TaskCreations,
        Method::GET,
        format!("/ent/v2/tasks/{id}/creations"),
        bytes::Bytes::new(),
    )
    .await
}

pub async fn cancel(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
) -> Result<HttpResponse, GatewayError> {
    let declared = body::check_declared_length(&req, MAX_CANCEL_BODY)?;
    let _identity = state.authenticate(&req).await?;
    let id = task_id(&path)?;
    let bytes = body::read(payload, declared, MAX_CANCEL_BODY).await?;
    if !bytes.is_empty() {
        body::require_json_content_type(&req)?;
        body::require_json_object(&bytes)?;
    }
    forward(
        &state,
        &upstream,
        &req,
        Endpoint::TaskCancel,
        Method::POST,
        format!("/ent/v2/tasks/{id}/cancel"),
        bytes,
    )
    .await
}
