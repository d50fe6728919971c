//! `POST /ent/v2/img2video`: authenticate, read and check the body, forward to Vidu.

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};

use super::forward;
use crate::app_state::AppState;
use crate::body;
use crate::error::GatewayError;
use crate::vidu::upstream::{Endpoint, Upstream};

pub async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
) -> Result<HttpResponse, GatewayError> {
    let limit = state.config.current().settings.server.max_body_bytes;
    let declared = body::check_declared_length(&req, limit)?;
    let _identity = state.authenticate(&req).await?;
    body::require_json_content_type(&req)?;
    let bytes = body::read(payload, declared, limit).await?;
    body::require_json_object(&bytes)?;
    forward(
        &state,
        &upstream,
        &req,
        Endpoint::Img2Video,
        Method::POST,
        "/ent/v2/img2video".into(),
        bytes,
    )
    .await
}
