//! The gateway's own endpoints under `/gateway/v1`.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::app_state::AppState;
use crate::error::GatewayError;

/// `GET /gateway/v1/config` (admins): the effective configuration, secrets redacted, with its version.
pub async fn config(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let identity = state.authenticate(&req).await?;
    if !identity.is_admin {
        return Err(GatewayError::Forbidden(
            "GET /gateway/v1/config is for admins: the token needs the auth.admin_role role".into(),
        ));
    }
    let config = state.config.current();
    Ok(HttpResponse::Ok().json(json!({
        "version": config.version,
        "origin": config.origin.to_string(),
        "config": config.settings,
    })))
}
