//! `AppState`: what every worker shares — the live config, the authenticator, metrics, the clock, the sandbox.

use std::sync::{Arc, RwLock};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use futures_util::future::LocalBoxFuture;
use tracing_actix_web::RootSpan;

use crate::auth::{Authenticator, Identity};
use crate::clock::SharedClock;
use crate::config::LiveConfig;
use crate::forward::sandbox::Sandbox;
use crate::http::error::GatewayError;
use crate::http::request_context::RequestId;
use crate::metrics::{Metrics, ReasonLabels};
use crate::state::Store;

pub struct AppState {
    pub config: Arc<LiveConfig>,
    /// Swapped on a reload that changes `[auth]`.
    pub auth: RwLock<Arc<Authenticator>>,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
    pub sandbox: Option<Arc<Sandbox>>,
    pub store: Arc<dyn Store>,
    /// This replica's id and its latest view of its peers (the heartbeat's).
    pub replicas: Arc<crate::replicas::ReplicaView>,
    /// The Vidu balance as last read.
    pub balance: Arc<crate::balance::BalanceWatch>,
}

impl AppState {
    /// Verifies the caller; counts refusals by reason and puts user and team on the request's log line.
    /// The authenticator in force.
    pub fn auth(&self) -> Arc<Authenticator> {
        self.auth.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub async fn authenticate(&self, req: &HttpRequest) -> Result<Identity, GatewayError> {
        let auth = self.auth();
        let authorization = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        match auth.authenticate(authorization).await {
            Ok(id) => {
                if let Some(span) = req.extensions().get::<RootSpan>() {
                    span.record("user", id.user.as_str());
                    span.record("team", id.team.as_deref().unwrap_or(""));
                }
                Ok(id)
            }
            Err(failure) => {
                self.metrics
                    .auth_failures
                    .get_or_create(&ReasonLabels {
                        reason: failure.reason,
                    })
                    .inc();
                Err(failure.into())
            }
        }
    }
}

/// The request id the context middleware assigned.
pub fn request_id(req: &HttpRequest) -> String {
    req.extensions()
        .get::<RequestId>()
        .map(|r| r.as_str().to_owned())
        .unwrap_or_default()
}

/// The caller, extracted once per request: a handler that takes an `Identity` runs only for a verified token.
/// (The create, the quote and the cancel check the declared body size first — a 413 comes before a 401 there —
/// so they call [`AppState::authenticate`] after that check instead.)
impl FromRequest for Identity {
    type Error = GatewayError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req.app_data::<web::Data<AppState>>().ok_or_else(|| {
                GatewayError::Internal(anyhow::anyhow!("AppState is not registered"))
            })?;
            state.authenticate(&req).await
        })
    }
}
