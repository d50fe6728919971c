//! The upstream seen by the routes: one `send` for the real Vidu API and the sandbox alike.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::{Method, StatusCode};
use bytes::Bytes;

use super::client::ViduClient;
use super::sandbox::Sandbox;
use crate::metrics::{EndpointLabels, Metrics, UpstreamLabels};

/// Which Vidu endpoint a call is for (metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Img2Video,
    TaskCreations,
    TaskCancel,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Img2Video => "img2video",
            Endpoint::TaskCreations => "task_creations",
            Endpoint::TaskCancel => "task_cancel",
        }
    }
}

/// A call to Vidu: path relative to `upstream.base_url`, and the exact body bytes to send.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub endpoint: Endpoint,
    pub method: Method,
    pub path: String,
    pub body: Bytes,
    pub request_id: String,
}

/// Vidu's answer, passed back to the caller unchanged.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Not one byte of the request left the gateway (connecting failed, or the connection failed on the first
    /// write): nothing was created.
    #[error("cannot connect to Vidu: {0}")]
    Connect(String),
    /// Some byte of the request may have reached Vidu and no answer came (a reset, or a clean close alike): the
    /// task may exist.
    #[error("the connection to Vidu failed after the request was sent: {0}")]
    Broken(String),
    /// No (complete) answer in time: the task may exist.
    #[error("Vidu did not answer in time")]
    Timeout,
}

/// The real API (one pooled HTTP client per worker) or the shared in-process simulator.
pub enum Upstream {
    Vidu(ViduClient),
    Sandbox(Arc<Sandbox>),
}

impl Upstream {
    pub async fn send(
        &self,
        req: UpstreamRequest,
        metrics: &Metrics,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let started = Instant::now();
        let endpoint = req.endpoint.label();
        let result = match self {
            Upstream::Vidu(client) => client.send(req, metrics).await,
            Upstream::Sandbox(sandbox) => Ok(sandbox.handle(&req)),
        };
        let outcome = match &result {
            Ok(r) if r.status.is_success() => "2xx",
            Ok(r) if r.status.is_client_error() => "4xx",
            Ok(_) => "5xx",
            Err(UpstreamError::Timeout) => "timeout",
            Err(UpstreamError::Connect(_)) => "connect_error",
            Err(UpstreamError::Broken(_)) => "broken",
        };
        metrics
            .upstream_requests
            .get_or_create(&UpstreamLabels { endpoint, outcome })
            .inc();
        metrics
            .upstream_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(started.elapsed().as_secs_f64());
        result
    }
}
