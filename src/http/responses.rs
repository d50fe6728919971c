//! What the edge adds to an answer: the gateway's headers of an admission-checked create, a refused create as a
//! response, Vidu's answer passed back unchanged (status, content type, body), and a create's answer as stored
//! for its `Idempotency-Key` and replayed.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use crate::admit::{Decided, unavailable};
use crate::flow::NotAdmitted;
use crate::forward::upstream::UpstreamResponse;
use crate::http::error::{GatewayError, PendingEnvelope, UpstreamBody};
use crate::idempotency::{IN_FLIGHT_RETRY_AFTER_SECS, REPLAYED, Stopped};
use crate::state::{RateStatus, StoredAnswer};

pub static X_CREDITS_ESTIMATED: HeaderName = HeaderName::from_static("x-credits-estimated");
pub static X_CREDITS_REMAINING: HeaderName = HeaderName::from_static("x-credits-remaining");
pub static X_OFF_PEAK_APPLIED: HeaderName = HeaderName::from_static("x-off-peak-applied");
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A create not admitted, as the caller sees it: the error, and the estimate of the run the store refused.
pub fn refused_response(not_admitted: NotAdmitted) -> HttpResponse {
    let (error, run, rate) = match not_admitted {
        NotAdmitted::Invalid(r) => (GatewayError::Validation(r), None, None),
        NotAdmitted::Refused(r) => (GatewayError::from(r.error), r.run, r.rate),
    };
    let mut res = actix_web::ResponseError::error_response(&error);
    if let Some((run, _)) = run
        && let Ok(v) = HeaderValue::from_str(&run.estimate.to_string())
    {
        res.headers_mut().insert(X_CREDITS_ESTIMATED.clone(), v);
    }
    if let Some(rate) = &rate {
        for (name, value) in ratelimit_headers(rate) {
            if let Ok(v) = HeaderValue::from_str(&value) {
                res.headers_mut().insert(name.clone(), v);
            }
        }
    }
    res
}

/// `RateLimit-Policy` and `RateLimit` (IETF draft-ietf-httpapi-ratelimit-headers) for one rate limit.
fn ratelimit_headers(r: &RateStatus) -> [(&'static HeaderName, String); 2] {
    [
        (
            &RATELIMIT_POLICY,
            format!("\"{}\";q={};w=60", r.scope, r.per_minute),
        ),
        (
            &RATELIMIT,
            format!("\"{}\";r={};t={}", r.scope, r.remaining, r.reset_secs),
        ),
    ]
}

/// The headers of an admission-checked answer (computed before forwarding, set on whatever comes back).
pub fn admission_headers(decided: &Decided) -> Vec<(HeaderName, HeaderValue)> {
    let grant = &decided.granted;
    let mut h = Vec::with_capacity(5);
    let mut put = |name: &HeaderName, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.push((name.clone(), v));
        }
    };
    put(&X_CREDITS_ESTIMATED, decided.run.estimate.to_string());
    if let Some(left) = grant.remaining_credits {
        put(&X_CREDITS_REMAINING, left.to_string());
    }
    if let Some(why) = &decided.off_peak_applied {
        // Header values are visible ASCII: keep the reason readable, drop anything else.
        let ascii: String = why
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        put(&X_OFF_PEAK_APPLIED, ascii);
    }
    if let Some(r) = &grant.rate {
        for (name, value) in ratelimit_headers(r) {
            put(name, value);
        }
    }
    h
}

/// Vidu's answer as the caller's response.
pub fn upstream_response(answer: UpstreamResponse) -> HttpResponse {
    let status = StatusCode::from_u16(answer.status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut res = HttpResponse::build(status);
    if let Some(ct) = answer.content_type {
        res.insert_header((actix_web::http::header::CONTENT_TYPE, ct));
    }
    let mut res = res.body(answer.body);
    res.extensions_mut().insert(UpstreamBody);
    res
}

/// A create's answer as the caller gets it — status, the gateway's headers (`headers`: the admission's), the body
/// byte for byte (a gateway error's envelope with this request's id as `trace_id`, as the request-context
/// middleware writes it) — stored for a retry with the same `Idempotency-Key`.
pub fn kept_answer(
    answer: Result<&UpstreamResponse, GatewayError>,
    headers: &[(HeaderName, HeaderValue)],
    request_id: &str,
) -> StoredAnswer {
    let mut kept: Vec<(String, String)> = Vec::with_capacity(headers.len() + 2);
    let (status, body) = match answer {
        Ok(a) => {
            if let Some(ct) = &a.content_type {
                kept.push((header::CONTENT_TYPE.to_string(), ct.clone()));
            }
            (a.status.as_u16(), a.body.clone())
        }
        Err(e) => {
            let res = e.error_response();
            kept.push((header::CONTENT_TYPE.to_string(), "application/json".into()));
            kept.extend(res.headers().iter().filter_map(|(name, value)| {
                let value = value.to_str().ok()?;
                (name != header::CONTENT_TYPE).then(|| (name.to_string(), value.to_owned()))
            }));
            let envelope = res
                .extensions()
                .get::<PendingEnvelope>()
                .cloned()
                .unwrap_or_else(|| PendingEnvelope::for_status(res.status()));
            (res.status().as_u16(), envelope.render(request_id).into())
        }
    };
    kept.extend(
        headers
            .iter()
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned()))),
    );
    StoredAnswer {
        status,
        headers: kept,
        body,
    }
}

/// A create that does not go on because of its `Idempotency-Key`: the stored answer replayed (with
/// `Idempotent-Replayed: true`; `X-Request-Id` is this request's), or 409, 422 or 503.
pub fn stopped(s: Stopped) -> HttpResponse {
    let error = match s {
        Stopped::Replay(answer) => return replay(answer),
        Stopped::InFlight { lease_left_ms } => GatewayError::IdempotencyKeyInFlight {
            retry_after_secs: IN_FLIGHT_RETRY_AFTER_SECS,
            lease_secs: lease_left_ms.div_ceil(1000).max(1),
        },
        Stopped::Reused => GatewayError::IdempotencyKeyReused,
        Stopped::Unavailable(e) => GatewayError::from(unavailable(&e)),
    };
    error.error_response()
}

fn replay(answer: StoredAnswer) -> HttpResponse {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut res = HttpResponse::build(status).body(answer.body);
    let headers = res.headers_mut();
    for (name, value) in &answer.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    headers.insert(
        HeaderName::from_static(REPLAYED),
        HeaderValue::from_static("true"),
    );
    // Final as stored: the middleware adds only this request's `X-Request-Id`.
    res.extensions_mut().insert(UpstreamBody);
    res
}
