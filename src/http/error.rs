//! `GatewayError`: every error the gateway itself produces, rendered in Vidu's envelope
//! (`{"code", "reason", "message", "metadata": {"trace_id", "source": "gateway", "fields"}}`).
//!
//! A handler returns `GatewayError`; `error_response` builds the status and headers and stores the envelope in
//! the response's extensions; the request-context middleware writes it with `metadata.trace_id` (the request id),
//! and turns actix's own error responses (404, 405, payload errors) into the same envelope.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::validate::{FieldViolation, Rejection};

use crate::auth::AuthFailure;
use crate::policy::denial::Denial;
pub use crate::policy::denial::LimitReason;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(String),
    /// A body refused by validation (`BadRequest` when it is not a JSON object at all).
    #[error("{}", .0.message)]
    Validation(Rejection),
    #[error("{message}")]
    Unauthorized {
        message: String,
        /// A token was sent but is invalid (adds `error="invalid_token"` to `WWW-Authenticate`).
        invalid_token: bool,
    },
    #[error("{0}")]
    Forbidden(String),
    #[error("task not found")]
    TaskNotFound,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error(
        "request body is larger than the {limit} bytes this gateway accepts (server.max_body_bytes)"
    )]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request body did not arrive in time (`server.body_read_timeout_ms`, `server.body_min_bytes_per_sec`).
    #[error("{0}")]
    RequestTimeout(String),
    /// Policy or admission refused the request (403, 422, 429 or 503, by the denial).
    #[error("{0}")]
    Denied(Denial),
    #[error("{0}")]
    UpstreamUnavailable(String),
    #[error("{message}")]
    ServiceUnavailable {
        message: String,
        retry_after_secs: u64,
    },
    #[error("Vidu did not answer within {timeout_ms} ms (upstream.request_timeout_ms)")]
    UpstreamTimeout { timeout_ms: u64 },
    /// A create with the same `Idempotency-Key` and body is still running (409, with `Retry-After`).
    #[error(
        "a request with this Idempotency-Key is still being processed: retry after {retry_after_secs} s to get its \
         answer (if it never finishes, the key is free again within {lease_secs} s)"
    )]
    IdempotencyKeyInFlight {
        retry_after_secs: u64,
        lease_secs: u64,
    },
    /// The `Idempotency-Key` was used with another body (422).
    #[error(
        "this Idempotency-Key was used with a different request body: send the same body to get the first \
         request's answer, or use a new key for a new request"
    )]
    IdempotencyKeyReused,
    /// A bug or an unexpected failure: the caller sees an opaque message, the cause goes to the log.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<AuthFailure> for GatewayError {
    fn from(f: AuthFailure) -> Self {
        GatewayError::Unauthorized {
            message: f.message,
            invalid_token: f.token_sent,
        }
    }
}

impl From<Denial> for GatewayError {
    fn from(d: Denial) -> Self {
        match d {
            // Logged with its cause, answered opaquely, like every internal error.
            Denial::Internal(e) => GatewayError::Internal(e),
            d => GatewayError::Denied(d),
        }
    }
}

impl GatewayError {
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_) => "BadRequest",
            GatewayError::Validation(r) => r.reason.as_str(),
            GatewayError::Unauthorized { .. } => "Unauthorized",
            GatewayError::Forbidden(_) => "Forbidden",
            GatewayError::TaskNotFound => "TaskNotFound",
            GatewayError::NotFound(_) => "NotFound",
            GatewayError::MethodNotAllowed(_) => "MethodNotAllowed",
            GatewayError::PayloadTooLarge { .. } => "PayloadTooLarge",
            GatewayError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            GatewayError::RequestTimeout(_) => "RequestTimeout",
            GatewayError::Denied(d) => d.reason(),
            GatewayError::UpstreamUnavailable(_) => "UpstreamUnavailable",
            GatewayError::ServiceUnavailable { .. } => "ServiceUnavailable",
            GatewayError::UpstreamTimeout { .. } => "UpstreamTimeout",
            GatewayError::IdempotencyKeyInFlight { .. } => "IdempotencyKeyInFlight",
            GatewayError::IdempotencyKeyReused => "IdempotencyKeyReused",
            GatewayError::Internal(_) => "InternalServiceFailure",
        }
    }

    /// The headers this error's answer carries beside the envelope: `WWW-Authenticate` on every 401,
    /// `Retry-After` when waiting helps.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let retry_after = |secs: u64| (header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        match self {
            GatewayError::Unauthorized {
                message,
                invalid_token,
            } => {
                let value = if *invalid_token {
                    format!(
                        "Bearer error=\"invalid_token\", error_description=\"{}\"",
                        // A quoted-string of visible ASCII: a caller's non-ASCII `kid` echoed in the message
                        // must not cost the header (RFC 6750 requires it on every 401).
                        message
                            .chars()
                            .map(|c| match c {
                                '"' | '\\' => '\'',
                                ' '..='~' => c,
                                _ => '?',
                            })
                            .collect::<String>()
                    )
                } else {
                    "Bearer".to_owned()
                };
                HeaderValue::from_str(&value)
                    .map(|v| vec![(header::WWW_AUTHENTICATE, v)])
                    .unwrap_or_default()
            }
            GatewayError::ServiceUnavailable {
                retry_after_secs, ..
            }
            | GatewayError::IdempotencyKeyInFlight {
                retry_after_secs, ..
            } => vec![retry_after(*retry_after_secs)],
            GatewayError::Denied(d) => d.retry_after_secs().map(retry_after).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// One error of every kind the gateway answers with — every variant, every reason (each field reason of
    /// validation, each limit of admission) — with a message like the real one's. The API description reads the
    /// statuses, reasons, headers and examples of its error answers from these, so it lists what the code sends.
    pub fn every_kind() -> Vec<GatewayError> {
        use crate::validate::FieldReason;
        let mut all = vec![GatewayError::Validation(Rejection::field(
            "duration",
            FieldReason::OutOfRange,
            "viduq2 allows 1..=10 seconds, got 12".into(),
        ))];
        all.extend(FieldReason::ALL.into_iter().map(|reason| {
            GatewayError::Validation(Rejection::field(
                "images",
                reason,
                format!(
                    "{} (metadata.fields says which field and why)",
                    reason.as_str()
                ),
            ))
        }));
        all.extend([
            GatewayError::BadRequest(
                "the body is not a JSON object: send {\"model\": …, \"images\": [...]}".into(),
            ),
            GatewayError::Unauthorized {
                message: "the token has expired".into(),
                invalid_token: true,
            },
            GatewayError::Forbidden(
                "GET /gateway/v1/config is for admins: the token needs the auth.admin_role role".into(),
            ),
            GatewayError::Denied(Denial::Forbidden(
                "model viduq3-pro is not allowed for team marketing (policy.teams.marketing.models)".into(),
            )),
            GatewayError::TaskNotFound,
            GatewayError::NotFound("no route for GET /ent/v2/nope".into()),
            GatewayError::MethodNotAllowed("this path does not accept that method".into()),
            GatewayError::RequestTimeout(
                "the request body did not arrive within server.body_read_timeout_ms".into(),
            ),
            GatewayError::IdempotencyKeyInFlight {
                retry_after_secs: crate::idempotency::IN_FLIGHT_RETRY_AFTER_SECS,
                lease_secs: 60,
            },
            GatewayError::PayloadTooLarge { limit: 20_971_520 },
            GatewayError::UnsupportedMediaType("send Content-Type: application/json".into()),
            GatewayError::Denied(Denial::PolicyConflict(
                "policy forces off_peak, which viduq3-pro cannot run with audio: send \"audio\": false".into(),
            )),
            GatewayError::IdempotencyKeyReused,
        ]);
        all.push(GatewayError::Denied(Denial::Limited {
            reason: LimitReason::CreditBudgetExhausted,
            message: "the team daily credit budget cannot cover this request: 4980 of 5000 credits used, this \
                      request needs 55 (policy.teams.marketing.team_daily_credits); it resets in 5 h 12 min"
                .into(),
            retry_after_secs: 18_720,
        }));
        all.extend(LimitReason::ALL.into_iter().map(|reason| {
            GatewayError::Denied(Denial::Limited {
                reason,
                message: format!(
                    "{}: the message names the limit, the key that set it and when the request fits",
                    reason.as_str()
                ),
                retry_after_secs: 30,
            })
        }));
        all.extend([
            GatewayError::Internal(anyhow::anyhow!("an example")),
            GatewayError::UpstreamUnavailable(
                "Vidu is unreachable (connection failed before the request was sent); nothing was created — \
                 retry later"
                    .into(),
            ),
            GatewayError::ServiceUnavailable {
                message: "the state backend cannot be reached; retry shortly".into(),
                retry_after_secs: 5,
            },
            GatewayError::Denied(Denial::Unavailable {
                message: "the state backend cannot decide (state.on_unavailable = fail_closed)".into(),
                retry_after_secs: 5,
            }),
            GatewayError::UpstreamTimeout { timeout_ms: 120_000 },
        ]);
        all
    }

    /// The envelope this error is answered with, for `trace_id`.
    pub fn envelope(&self, trace_id: &str) -> Vec<u8> {
        PendingEnvelope {
            code: self.status_code().as_u16(),
            reason: self.reason(),
            message: self.public_message(),
            fields: match self {
                GatewayError::Validation(r) => r.fields.clone(),
                _ => Vec::new(),
            },
        }
        .render(trace_id)
    }

    /// The message the caller sees (never a cause chain for internal errors).
    fn public_message(&self) -> String {
        match self {
            GatewayError::Internal(_) => {
                "internal error in the gateway; quote metadata.trace_id when reporting it".into()
            }
            other => other.to_string(),
        }
    }
}

/// The envelope waiting in a response's extensions for its `trace_id`.
#[derive(Clone, Debug)]
pub struct PendingEnvelope {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub fields: Vec<FieldViolation>,
}

/// Marks a response whose body is final: Vidu's own (passed through unchanged, even when it is an error), or an
/// answer stored for an `Idempotency-Key`, replayed byte for byte.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamBody;

/// Vidu's error envelope, as the gateway writes it for its own errors.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorEnvelope)]
pub struct Envelope<'a> {
    /// The HTTP status.
    code: u16,
    /// What went wrong, stable: clients match on it.
    #[schema(schema_with = reason_schema)]
    reason: &'a str,
    /// What to change, for people.
    message: &'a str,
    metadata: Metadata<'a>,
}

/// Where an error comes from and what it concerns.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorMetadata)]
pub struct Metadata<'a> {
    /// The request id (`X-Request-Id` of the answer).
    trace_id: &'a str,
    /// `gateway` for the gateway's own errors (Vidu's own pass through unchanged, without it).
    #[schema(schema_with = source_schema)]
    source: &'static str,
    /// Every field problem of a refused body (validation reasons only; absent otherwise).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    #[schema(value_type = Vec<FieldViolation>, required = false)]
    fields: &'a [FieldViolation],
}

/// `ErrorEnvelope.reason`: every reason the gateway answers with.
fn reason_schema() -> utoipa::openapi::schema::Schema {
    let reasons: std::collections::BTreeSet<&str> = GatewayError::every_kind()
        .iter()
        .map(GatewayError::reason)
        .collect();
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(reasons))
        .description(Some("What went wrong, stable: clients match on it."))
        .into()
}

/// `ErrorEnvelope.metadata.source`: `gateway`.
fn source_schema() -> utoipa::openapi::schema::Schema {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(["gateway"]))
        .description(Some(
            "`gateway` for the gateway's own errors; Vidu's errors pass through unchanged, without it.",
        ))
        .into()
}

impl PendingEnvelope {
    /// The JSON body, with the request id as `metadata.trace_id`.
    pub fn render(&self, trace_id: &str) -> Vec<u8> {
        serde_json::to_vec(&Envelope {
            code: self.code,
            reason: self.reason,
            message: &self.message,
            metadata: Metadata {
                trace_id,
                source: "gateway",
                fields: &self.fields,
            },
        })
        .unwrap_or_default()
    }

    /// The envelope for an error response that actix (or a library) produced without one.
    pub fn for_status(status: StatusCode) -> Self {
        let (reason, message) = match status.as_u16() {
            400 => (
                "BadRequest",
                "the request could not be read: send a JSON object body",
            ),
            401 => ("Unauthorized", "send Authorization: Bearer <token>"),
            403 => ("Forbidden", "not allowed"),
            404 => ("NotFound", "no such path on this gateway"),
            405 => ("MethodNotAllowed", "this path does not accept that method"),
            413 => ("PayloadTooLarge", "request body too large"),
            415 => (
                "UnsupportedMediaType",
                "send Content-Type: application/json",
            ),
            408 => ("RequestTimeout", "the request was not received in time"),
            503 => ("ServiceUnavailable", "the gateway is not ready"),
            _ if status.is_client_error() => ("BadRequest", "the request could not be processed"),
            _ => (
                "InternalServiceFailure",
                "internal error in the gateway; quote metadata.trace_id when reporting it",
            ),
        };
        Self {
            code: status.as_u16(),
            reason,
            message: message.into(),
            fields: Vec::new(),
        }
    }
}

impl ResponseError for GatewayError {
    fn status_code(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) | GatewayError::Validation(_) => StatusCode::BAD_REQUEST,
            GatewayError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::TaskNotFound | GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::Denied(d) => match d {
                Denial::Forbidden(_) => StatusCode::FORBIDDEN,
                Denial::PolicyConflict(_) => StatusCode::UNPROCESSABLE_ENTITY,
                Denial::Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
                Denial::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
                Denial::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            GatewayError::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            GatewayError::ServiceUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::IdempotencyKeyInFlight { .. } => StatusCode::CONFLICT,
            GatewayError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let mut res = HttpResponse::build(status);
        for header in self.headers() {
            res.insert_header(header);
        }
        match self {
            GatewayError::Internal(cause) => {
                tracing::error!(error = ?cause, "internal error");
            }
            // The rest of the body may still be on its way: this connection is not reused.
            GatewayError::RequestTimeout(_) => {
                res.force_close();
            }
            _ => {}
        }
        let fields = match self {
            GatewayError::Validation(r) => r.fields.clone(),
            _ => Vec::new(),
        };
        let mut res = res.finish();
        res.extensions_mut().insert(PendingEnvelope {
            code: status.as_u16(),
            reason: self.reason(),
            message: self.public_message(),
            fields,
        });
        res
    }
}

impl From<anyhow::Error> for GatewayError {
    fn from(e: anyhow::Error) -> Self {
        GatewayError::Internal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message echoing a caller's non-ASCII `kid` still gets its `WWW-Authenticate` header.
    #[test]
    fn a_non_ascii_401_message_keeps_www_authenticate() {
        let e = GatewayError::Unauthorized {
            message: "unknown key id \"ключ\": no configured key verifies it".into(),
            invalid_token: true,
        };
        let res = e.error_response();
        let v = res
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .expect("WWW-Authenticate on every 401");
        assert_eq!(
            v.to_str().unwrap(),
            "Bearer error=\"invalid_token\", error_description=\"unknown key id '????': no configured key verifies it\""
        );
    }

    #[test]
    fn every_error_knows_its_status_and_vidu_reason() {
        let e = GatewayError::from(Denial::Limited {
            reason: LimitReason::CreditBudgetExhausted,
            message: "x".into(),
            retry_after_secs: 5,
        });
        assert_eq!(e.status_code(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.reason(), "CreditBudgetExhausted");
        let res = e.error_response();
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "5");
    }

    #[test]
    fn a_validation_rejection_renders_its_reason_and_fields() {
        let settings = crate::config::Settings::default();
        let rendered = |body: &[u8]| {
            let e =
                GatewayError::Validation(crate::validate::validate(body, &settings).unwrap_err());
            assert_eq!(e.status_code(), StatusCode::BAD_REQUEST);
            let env = e
                .error_response()
                .extensions()
                .get::<PendingEnvelope>()
                .cloned()
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&env.render("t")).unwrap()
        };
        let v = rendered(b"{");
        assert_eq!(v["reason"], "BadRequest");
        assert!(v["metadata"].get("fields").is_none());
        let v = rendered(br#"{"model": "viduq2"}"#);
        assert_eq!(v["reason"], "FieldLacking");
        assert_eq!(v["metadata"]["fields"][0]["field"], "images");
        assert_eq!(v["metadata"]["fields"][0]["reason"], "Missing");
    }

    /// The API description lists what `every_kind` holds: every variant and every reason.
    #[test]
    fn every_kind_holds_every_variant_and_reason() {
        // A new variant does not compile here until it is numbered, and fails until `every_kind` holds one.
        fn variant(e: &GatewayError) -> usize {
            match e {
                GatewayError::BadRequest(_) => 0,
                GatewayError::Validation(_) => 1,
                GatewayError::Unauthorized { .. } => 2,
                GatewayError::Forbidden(_) => 3,
                GatewayError::TaskNotFound => 4,
                GatewayError::NotFound(_) => 5,
                GatewayError::MethodNotAllowed(_) => 6,
                GatewayError::PayloadTooLarge { .. } => 7,
                GatewayError::UnsupportedMediaType(_) => 8,
                GatewayError::RequestTimeout(_) => 9,
                GatewayError::Denied(Denial::Forbidden(_)) => 10,
                GatewayError::Denied(Denial::PolicyConflict(_)) => 11,
                GatewayError::Denied(Denial::Limited { .. }) => 12,
                GatewayError::Denied(Denial::Unavailable { .. }) => 13,
                GatewayError::Denied(Denial::Internal(_)) => 14,
                GatewayError::UpstreamUnavailable(_) => 15,
                GatewayError::ServiceUnavailable { .. } => 16,
                GatewayError::UpstreamTimeout { .. } => 17,
                GatewayError::IdempotencyKeyInFlight { .. } => 18,
                GatewayError::IdempotencyKeyReused => 19,
                GatewayError::Internal(_) => 20,
            }
        }
        let all = GatewayError::every_kind();
        let seen: std::collections::BTreeSet<usize> = all.iter().map(variant).collect();
        // `Denial::Internal` becomes `GatewayError::Internal` (`From<Denial>`): it is never answered as such.
        let expected: std::collections::BTreeSet<usize> = (0..=20).filter(|v| *v != 14).collect();
        assert_eq!(seen, expected);
        let reasons: std::collections::BTreeSet<&str> =
            all.iter().map(GatewayError::reason).collect();
        for r in crate::validate::FieldReason::ALL {
            assert!(reasons.contains(r.top_level().as_str()), "{r:?}");
        }
        for r in LimitReason::ALL {
            assert!(reasons.contains(r.as_str()), "{r:?}");
        }
        assert_eq!(reasons.len(), 26, "{reasons:?}");
    }

    #[test]
    fn internal_errors_never_show_their_cause() {
        let e = GatewayError::Internal(anyhow::anyhow!("db password is hunter2"));
        let res = e.error_response();
        let env = res.extensions().get::<PendingEnvelope>().cloned().unwrap();
        assert!(!env.message.contains("hunter2"));
        assert_eq!(env.reason, "InternalServiceFailure");
    }

    #[test]
    fn the_envelope_carries_trace_id_and_source() {
        let env = PendingEnvelope::for_status(StatusCode::METHOD_NOT_ALLOWED);
        let v: serde_json::Value = serde_json::from_slice(&env.render("abc")).unwrap();
        assert_eq!(v["code"], 405);
        assert_eq!(v["reason"], "MethodNotAllowed");
        assert_eq!(v["metadata"]["trace_id"], "abc");
        assert_eq!(v["metadata"]["source"], "gateway");
        assert!(v["metadata"].get("fields").is_none());
    }
}
