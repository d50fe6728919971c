//! The outermost middleware: assigns the request id, renders every gateway error (and actix's own) as Vidu's
//! envelope with `metadata.trace_id`, sets `X-Request-Id`, and records HTTP metrics.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};

use crate::http::error::{PendingEnvelope, UpstreamBody};
use crate::metrics::{HttpLabels, Metrics, RouteLabels};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id: the caller's `X-Request-Id` when sane (1–128 visible ASCII characters), else a new UUID.
#[derive(Clone, Debug)]
pub struct RequestId(Rc<str>);

impl RequestId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn from_request(req: &ServiceRequest) -> Self {
        let caller = req
            .headers()
            .get(&X_REQUEST_ID)
            .map(HeaderValue::as_bytes)
            .filter(|v| is_sane_request_id(v))
            .and_then(|v| std::str::from_utf8(v).ok());
        match caller {
            Some(id) => RequestId(Rc::from(id)),
            None => RequestId(Rc::from(uuid::Uuid::new_v4().simple().to_string())),
        }
    }
}

pub fn is_sane_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len()) && v.iter().all(|b| (0x21..=0x7e).contains(b))
}

pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let started = Instant::now();
    let request_id = RequestId::from_request(&req);
    req.extensions_mut().insert(request_id.clone());
    let metrics = req.app_data::<web::Data<Arc<Metrics>>>().cloned();
    // Routing and handlers turn every error into a response, so `Err` only comes from a broken inner
    // middleware; it is passed on as is. (The request cannot be cloned here to build a response: routing needs
    // it unshared.)
    let res = next.call(req).await?.map_into_boxed_body();
    let mut res = render_envelope(res, request_id.as_str());
    if let Ok(v) = HeaderValue::from_str(request_id.as_str()) {
        res.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    if let Some(m) = metrics {
        let route = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        m.http_duration
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        m.http_requests
            .get_or_create(&HttpLabels {
                route,
                method: res.request().method().to_string(),
                status: res.status().as_u16(),
            })
            .inc();
    }
    Ok(res)
}

/// Writes the envelope of a gateway error, or of an actix error response that has none; Vidu's own bodies pass.
fn render_envelope(res: ServiceResponse<BoxBody>, trace_id: &str) -> ServiceResponse<BoxBody> {
    let status = res.status();
    let pending = res
        .response()
        .extensions()
        .get::<PendingEnvelope>()
        .cloned();
    let envelope = match pending {
        Some(p) => p,
        None if status.as_u16() >= 400
            && res.response().extensions().get::<UpstreamBody>().is_none() =>
        {
            PendingEnvelope::for_status(status)
        }
        None => return res,
    };
    if status.is_server_error()
        && let Some(e) = res.response().error()
    {
        tracing::error!(error = %e, "request failed");
    }
    let body = envelope.render(trace_id);
    res.map_body(|head, _| {
        head.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        BoxBody::new(body)
    })
}
