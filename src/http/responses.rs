//! What the edge adds to an answer: the gateway's headers of an admission-checked create, a refused create as a
//! response, and Vidu's answer passed back unchanged (status, content type, body).

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};

use crate::admit::Decided;
use crate::flow::NotAdmitted;
use crate::forward::upstream::UpstreamResponse;
use crate::http::error::{GatewayError, UpstreamBody};

pub static X_CREDITS_ESTIMATED: HeaderName = HeaderName::from_static("x-credits-estimated");
pub static X_CREDITS_REMAINING: HeaderName = HeaderName::from_static("x-credits-remaining");
pub static X_OFF_PEAK_APPLIED: HeaderName = HeaderName::from_static("x-off-peak-applied");
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A create not admitted, as the caller sees it: the error, and the estimate of the run the store refused.
pub fn refused_response(not_admitted: NotAdmitted) -> HttpResponse {
    let (error, run) = match not_admitted {
        NotAdmitted::Invalid(r) => (GatewayError::Validation(r), None),
        NotAdmitted::Refused(r) => (GatewayError::from(r.error), r.run),
    };
    let mut res = actix_web::ResponseError::error_response(&error);
    if let Some((run, _)) = run
        && let Ok(v) = HeaderValue::from_str(&run.estimate.to_string())
    {
        res.headers_mut().insert(X_CREDITS_ESTIMATED.clone(), v);
    }
    res
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
        put(
            &RATELIMIT_POLICY,
            format!("\"{}\";q={};w=60", r.scope, r.per_minute),
        );
        put(
            &RATELIMIT,
            format!("\"{}\";r={};t={}", r.scope, r.remaining, r.reset_secs),
        );
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
