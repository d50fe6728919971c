//! The relay: every state change of a task whose creator gave a `callback_url` is POSTed there as Vidu would send
//! it (the query-task body), signed with Vidu's scheme under the team's relay secret, from the store's outbox:
//! at least once, with exponential backoff (`callbacks.relay_backoff_ms` doubling, at most
//! `callbacks.relay_backoff_max_ms`) up to `callbacks.relay_attempts`, each attempt within
//! `callbacks.relay_timeout_ms`, never following a redirect, only to hosts `callbacks.relay_hosts` allows. The
//! request carries nothing of the gateway's but the body and the signature headers (never the enterprise key).

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::Version;

use crate::callbacks::hosts;
use crate::callbacks::signature::signed_headers;
use crate::clock::SharedClock;
use crate::config::{CallbacksSettings, LiveConfig};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::state::{RelayJob, RelayOutcome, Store};

/// How often the outbox is looked at.
pub const TICK: Duration = Duration::from_millis(500);
/// Jobs taken per look.
const BATCH: usize = 32;

pub struct Relay {
    pub store: Arc<dyn Store>,
    pub config: Arc<LiveConfig>,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
}

/// The wait before attempt `attempts + 1` after `attempts` failed ones: `backoff_ms` doubling, capped.
pub fn backoff(c: &CallbacksSettings, attempts: u32) -> u64 {
    let doubled = c.relay_backoff_ms.saturating_mul(
        1u64.checked_shl(attempts.saturating_sub(1))
            .unwrap_or(u64::MAX),
    );
    doubled.min(c.relay_backoff_max_ms)
}

impl Relay {
    pub async fn run(self, tick: Duration) {
        let mut client: Option<(u64, awc::Client)> = None;
        loop {
            tokio::time::sleep(tick).await;
            let settings = self.config.current().settings.callbacks.clone();
            // One client per timeout in force (rebuilt when a reload changes it).
            let timeout = settings.relay_timeout_ms;
            if client.as_ref().is_none_or(|(t, _)| *t != timeout) {
                client = Some((timeout, relay_client(Duration::from_millis(timeout))));
            }
            let Some((_, http)) = &client else { continue };
            let lease = timeout.saturating_add(5_000);
            let jobs = match self.store.claim_relays(BATCH, lease).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::debug!(error = %e, "the relay could not read the outbox; next tick");
                    continue;
                }
            };
            let sends = jobs.iter().map(|job| self.deliver(http, &settings, job));
            futures_util::future::join_all(sends).await;
        }
    }

    async fn deliver(&self, http: &awc::Client, settings: &CallbacksSettings, job: &RelayJob) {
        let attempt = job.attempts + 1;
        let outcome = match self.attempt(http, settings, job).await {
            Ok(()) => RelayOutcome::Delivered,
            Err(Refused::Never(why)) => {
                tracing::warn!(task_id = %job.task_id, team = %job.team, why, "a task state will not be relayed");
                RelayOutcome::GaveUp
            }
            Err(Refused::Failed(why)) if attempt >= settings.relay_attempts => {
                tracing::warn!(task_id = %job.task_id, team = %job.team, attempts = attempt, why,
                    "gave up relaying a task state after callbacks.relay_attempts attempts");
                RelayOutcome::GaveUp
            }
            Err(Refused::Failed(why)) => {
                let after_ms = backoff(settings, attempt);
                tracing::info!(task_id = %job.task_id, team = %job.team, attempt, after_ms, why,
                    "a task state could not be relayed; trying again");
                RelayOutcome::Retry { after_ms }
            }
        };
        let label = match outcome {
            RelayOutcome::Delivered => "delivered",
            RelayOutcome::Retry { .. } => "retried",
            RelayOutcome::GaveUp => "gave_up",
        };
        self.metrics
            .lifecycle
            .relays
            .get_or_create(&OutcomeLabels { outcome: label })
            .inc();
        if let Err(e) = self.store.relay_done(job, outcome).await {
            tracing::warn!(task_id = %job.task_id, error = %e, "the relay's outcome could not be recorded; it may be delivered again");
        }
    }

    async fn attempt(
        &self,
        http: &awc::Client,
        settings: &CallbacksSettings,
        job: &RelayJob,
    ) -> Result<(), Refused> {
        let url =
            url::Url::parse(&job.url).map_err(|e| Refused::Never(format!("callback_url: {e}")))?;
        let host = url.host_str().unwrap_or_default();
        if !hosts::allowed(settings, host) {
            return Err(Refused::Never(format!(
                "{host} is no longer in callbacks.relay_hosts"
            )));
        }
        let Some(secret) = settings.secret_for(&job.team) else {
            return Err(Refused::Never(format!(
                "no relay secret for team {:?} any more (callbacks.teams.{}.secret, callbacks.relay_secret)",
                job.team, job.team
            )));
        };
        let nonce = uuid::Uuid::new_v4().to_string();
        let mut req = http.post(url.as_str()).content_type("application/json");
        for (name, value) in
            signed_headers(secret.expose().as_bytes(), &url, self.clock.now(), &nonce)
        {
            req = req.insert_header((name, value));
        }
        match req.send_body(job.body.clone()).await {
            Ok(mut answer) => {
                // Read (a little of) the answer so the connection can be reused; its content does not matter.
                let _ = answer.body().limit(64 * 1024).await;
                if answer.status().is_success() {
                    Ok(())
                } else {
                    Err(Refused::Failed(format!(
                        "the endpoint answered {}",
                        answer.status()
                    )))
                }
            }
            Err(e) => Err(Refused::Failed(e.to_string())),
        }
    }
}

enum Refused {
    /// Will never work as configured now.
    Never(String),
    /// May work later.
    Failed(String),
}

/// A client that follows no redirect, sends no default header, and gives each attempt `timeout` in all.
fn relay_client(timeout: Duration) -> awc::Client {
    let connector = awc::Connector::new()
        .max_http_version(Version::HTTP_11)
        .timeout(timeout)
        .limit(64);
    awc::Client::builder()
        .connector(connector)
        .timeout(timeout)
        .disable_redirects()
        .no_default_headers()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = CallbacksSettings {
            relay_backoff_ms: 1000,
            relay_backoff_max_ms: 5000,
            ..Default::default()
        };
        let waits: Vec<u64> = (1..=6).map(|a| backoff(&c, a)).collect();
        assert_eq!(waits, [1000, 2000, 4000, 5000, 5000, 5000]);
        assert_eq!(backoff(&c, 200), 5000);
    }
}
