//! Request bodies: declared-length check, content type, and reading under `server.max_body_bytes` into one
//! buffer (sized from `Content-Length`, so a large image is received once and never copied again). Deadlines and
//! the cap on buffered bodies are the [`guard`] middleware's.

pub mod guard;

use actix_web::HttpRequest;
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::web;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::http::error::GatewayError;

/// 413 at once when the declared `Content-Length` is over the limit (nothing is read).
pub fn check_declared_length(
    req: &HttpRequest,
    limit: usize,
) -> Result<Option<usize>, GatewayError> {
    let Some(value) = req.headers().get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    let len: usize = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| GatewayError::BadRequest("Content-Length is not a number".into()))?;
    if len > limit {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    Ok(Some(len))
}

/// 415 unless the request says `Content-Type: application/json` (parameters such as `charset` allowed).
pub fn require_json_content_type(req: &HttpRequest) -> Result<(), GatewayError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else if ct.is_empty() {
        Err(GatewayError::UnsupportedMediaType(
            "missing Content-Type: send Content-Type: application/json".into(),
        ))
    } else {
        Err(GatewayError::UnsupportedMediaType(format!(
            "Content-Type {essence:?} is not supported: send Content-Type: application/json"
        )))
    }
}

/// Reads the whole body, refusing with 413 as soon as it passes `limit`.
pub async fn read(
    mut payload: web::Payload,
    declared: Option<usize>,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| payload_error(e, limit))?;
        if buf.len() + chunk.len() > limit {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The caller-facing error of a failed body read: the guard's own refusal (408, 503), 413, else 400.
pub(crate) fn payload_error(e: PayloadError, limit: usize) -> GatewayError {
    match e {
        PayloadError::Overflow => GatewayError::PayloadTooLarge { limit },
        PayloadError::Io(io) => match guard::refusal(io) {
            Ok(refused) => refused,
            Err(io) => {
                GatewayError::BadRequest(format!("the request body could not be read: {io}"))
            }
        },
        other => GatewayError::BadRequest(format!("the request body could not be read: {other}")),
    }
}

/// 400 `BadRequest` unless the body is UTF-8 JSON whose top level is an object.
pub fn require_json_object(body: &[u8]) -> Result<(), GatewayError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(GatewayError::BadRequest(
            "the body must be a JSON object, e.g. {\"model\": \"viduq2\", \"images\": [\"https://...\"]}".into(),
        ));
    }
    if let Err(e) = std::str::from_utf8(body) {
        return Err(GatewayError::BadRequest(format!(
            "the body is not UTF-8 (invalid byte at offset {}): send JSON encoded as UTF-8",
            e.valid_up_to()
        )));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| GatewayError::BadRequest(format!("the body is not valid JSON: {e}")))
}
