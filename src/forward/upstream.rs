//! The upstream seen by the routes: one `send` for the real Vidu API and the sandbox alike.

use std::sync::Arc;
use std::time::Instant;

use super::client::ViduClient;
pub use super::exchange::{Endpoint, UpstreamError, UpstreamRequest, UpstreamResponse};
use super::sandbox::Sandbox;
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
