//! The upstream seen by the routes: one `send` for the real Vidu API and the sandbox alike.

use std::sync::Arc;
use std::time::Instant;

use super::client::ViduClient;
pub use super::exchange::{Endpoint, UpstreamError, UpstreamRequest, UpstreamResponse};
use super::sandbox::Sandbox;
use super::stream::StreamedBody;
use crate::metrics::{EndpointLabels, Metrics, UpstreamLabels};

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
        record(metrics, endpoint, outcome(&result), started);
        result
    }

    /// True when creates are forwarded while their bodies arrive (the real API; the sandbox takes whole bodies).
    pub fn streams(&self) -> bool {
        matches!(self, Upstream::Vidu(_))
    }

    /// A create streamed while its body arrives (`forward::stream`). One the gateway stopped before its last
    /// byte (refused, or its caller gone) counts as `outcome="aborted"`.
    pub async fn send_streamed(
        &self,
        streamed: StreamedBody,
        request_id: &str,
        metrics: &Metrics,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let started = Instant::now();
        let aborted = streamed.body.aborted.clone();
        let result = match self {
            Upstream::Vidu(client) => client.send_streamed(streamed, request_id, metrics).await,
            Upstream::Sandbox(_) => Err(UpstreamError::Connect(
                "the sandbox takes whole bodies, not streamed ones".into(),
            )),
        };
        let outcome = if aborted.get() {
            "aborted"
        } else {
            outcome(&result)
        };
        record(metrics, Endpoint::Img2Video.label(), outcome, started);
        result
    }
}

fn outcome(result: &Result<UpstreamResponse, UpstreamError>) -> &'static str {
    match result {
        Ok(r) if r.status.is_success() => "2xx",
        Ok(r) if r.status.is_client_error() => "4xx",
        Ok(_) => "5xx",
        Err(UpstreamError::Timeout) => "timeout",
        Err(UpstreamError::Connect(_)) => "connect_error",
        Err(UpstreamError::Broken(_)) => "broken",
    }
}

fn record(metrics: &Metrics, endpoint: &'static str, outcome: &'static str, started: Instant) {
    metrics
        .upstream_requests
        .get_or_create(&UpstreamLabels { endpoint, outcome })
        .inc();
    if outcome != "aborted" {
        metrics
            .upstream_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(started.elapsed().as_secs_f64());
    }
}
