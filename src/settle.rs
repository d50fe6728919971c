//! Settle, the last phase of a create: what Vidu's answer means for the reservation, and the one `finish` an
//! admitted request owes the store (slots freed and reservation settled in one call).

use std::sync::Arc;

use futures_util::FutureExt as _;
use serde_json::Value;

use crate::forward::upstream::{UpstreamError, UpstreamResponse};
use crate::metrics::{CreditLabels, Metrics, TeamLabels};
use crate::state::{Created, Grant, Settlement, Store, TaskState};

/// What Vidu's answer means for the reservation. `callback_url` is the caller's, kept on the task when the
/// gateway relays to it.
pub fn settlement_of(
    result: &Result<UpstreamResponse, UpstreamError>,
    estimate: u64,
    callback_url: Option<String>,
) -> Settlement {
    match result {
        Ok(r) if r.status.is_success() => {
            let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            let task_id = v.get("task_id").and_then(|t| match t {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
            let state = v
                .get("state")
                .or_else(|| v.get("status"))
                .and_then(Value::as_str)
                .and_then(TaskState::parse)
                .unwrap_or(TaskState::Created);
            Settlement::Charged {
                credits: v.get("credits").and_then(Value::as_u64).unwrap_or(estimate),
                task: task_id.map(|task_id| Created {
                    task_id,
                    state,
                    callback_url,
                }),
            }
        }
        // Vidu answered with an error: no task was created.
        Ok(_) => Settlement::Released,
        // Nothing was sent.
        Err(UpstreamError::Connect(_)) => Settlement::Released,
        // The task may exist.
        Err(UpstreamError::Timeout | UpstreamError::Broken(_)) => Settlement::Unknown,
    }
}

/// An admitted request until its `finish`: counted in flight for its team, and finished exactly once. Finished
/// explicitly with what Vidu answered; dropped without that (a panic in the upstream call), it finishes as
/// `Unknown` — the task may exist — spawning the call when the backend cannot answer at once (`Drop` cannot
/// await).
pub struct Pending {
    store: Arc<dyn Store>,
    grant: Option<Grant>,
    estimate: u64,
    metrics: Arc<Metrics>,
    team: String,
}

impl Pending {
    pub fn new(
        store: Arc<dyn Store>,
        grant: Grant,
        estimate: u64,
        metrics: Arc<Metrics>,
        team: String,
    ) -> Self {
        metrics
            .in_flight
            .get_or_create(&TeamLabels { team: team.clone() })
            .inc();
        Self {
            store,
            grant: Some(grant),
            estimate,
            metrics,
            team,
        }
    }

    pub async fn finish(mut self, settlement: Settlement) {
        if let Some(grant) = self.grant.take() {
            self.count(&grant, &settlement);
            if let Err(e) = self.store.finish(grant, settlement).await {
                tracing::error!(error = %e, "the state backend could not finish a grant");
            }
        }
    }

    fn count(&self, grant: &Grant, settlement: &Settlement) {
        self.metrics
            .in_flight
            .get_or_create(&TeamLabels {
                team: self.team.clone(),
            })
            .dec();
        if !grant.is_accounted() {
            return;
        }
        let (kind, amount) = match settlement {
            Settlement::Charged { credits, .. } => ("settled", *credits),
            Settlement::Released => ("released", self.estimate),
            Settlement::Unknown => ("unknown", self.estimate),
        };
        self.metrics
            .credits
            .get_or_create(&CreditLabels {
                kind,
                team: self.team.clone(),
            })
            .inc_by(amount);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(grant) = self.grant.take() else {
            return;
        };
        self.count(&grant, &Settlement::Unknown);
        let store = self.store.clone();
        let finish = async move {
            if let Err(e) = store.finish(grant, Settlement::Unknown).await {
                tracing::error!(error = %e, "the state backend could not finish a dropped grant");
            }
        };
        // A backend that answers at once (memory) is done here; another gets a task, if a runtime is there to
        // run it (a runtime shutting down drops its tasks).
        let mut finish = finish.boxed_local();
        if (&mut finish).now_or_never().is_none() && actix_web::rt::System::try_current().is_some()
        {
            actix_web::rt::spawn(finish);
        }
    }
}
