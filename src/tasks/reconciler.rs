//! The reconciler: every tick, the replica holding the store's reconciler lease queries the unfinished tasks not
//! heard of for `tasks.reconcile_interval_secs` (oldest first, at most `tasks.reconcile_max_per_minute` a minute,
//! all replicas together), so a lost callback — or no callback URL at all — still ends every task. Every few ticks
//! it also releases the `unknown` reservations nobody resolved within `tasks.unknown_release_after_hours`.
//! With `tasks.reconcile_interval_secs = 0` it asks only about tasks a callback marked due (the callback's replica
//! stopped, or its confirming query failed).

use std::sync::Arc;
use std::time::Duration;

use crate::clock::SharedClock;
use crate::config::LiveConfig;
use crate::forward::upstream::Upstream;
use crate::metrics::{Metrics, OutcomeLabels};
use crate::state::{DueClaim, Resolution, Store};
use crate::tasks::learn::{Asked, ask};

/// How often the reconciler looks for due tasks.
pub const TICK: Duration = Duration::from_secs(1);
/// Unknown reservations are looked at every this many ticks.
const RELEASE_EVERY_TICKS: u32 = 10;

pub struct Reconciler {
    pub store: Arc<dyn Store>,
    pub config: Arc<LiveConfig>,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
    /// This replica, as the lease names it.
    pub replica: String,
}

impl Reconciler {
    pub async fn run(self, upstream: Upstream, tick: Duration) {
        let mut ticks: u32 = 0;
        loop {
            tokio::time::sleep(tick).await;
            self.reconcile(&upstream, tick).await;
            ticks = ticks.wrapping_add(1);
            if ticks.is_multiple_of(RELEASE_EVERY_TICKS) {
                self.release_unknown().await;
            }
        }
    }

    /// One round: claim what is due and ask Vidu about each.
    pub async fn reconcile(&self, upstream: &Upstream, tick: Duration) {
        let tasks = self.config.current().settings.tasks.clone();
        // `0` = never poll: only tasks a callback marked due (and the callback's own query did not confirm) are
        // asked about, so a callback is not lost when the replica that took it stops.
        let quiet_ms = match tasks.reconcile_interval_secs {
            0 => u64::MAX,
            secs => secs.saturating_mul(1000),
        };
        let claim = DueClaim {
            holder: self.replica.clone(),
            // Held across a few ticks, so a replica that stops hands over within seconds.
            lease_ms: u64::try_from(tick.as_millis().saturating_mul(5))
                .unwrap_or(u64::MAX)
                .max(5_000),
            quiet_ms,
            per_minute: tasks.reconcile_max_per_minute,
        };
        let due = match self.store.claim_due(&claim).await {
            Ok(due) => due,
            Err(e) => {
                tracing::debug!(error = %e, "the reconciler could not claim tasks; next tick");
                return;
            }
        };
        for task_id in due {
            let request_id = format!("reconcile-{}", uuid::Uuid::new_v4());
            let outcome = match ask(
                upstream,
                self.store.as_ref(),
                &self.metrics,
                &task_id,
                request_id,
            )
            .await
            {
                Asked::Answered => "ok",
                Asked::NotFound => {
                    tracing::warn!(
                        task_id,
                        "Vidu does not know a task the gateway created; it stays as it was"
                    );
                    "not_found"
                }
                Asked::Failed(e) => {
                    tracing::warn!(task_id, error = %e, "the reconciler could not query a task; it will ask again");
                    "error"
                }
            };
            self.metrics
                .lifecycle
                .reconcile_queries
                .get_or_create(&OutcomeLabels { outcome })
                .inc();
        }
    }

    /// Releases `unknown` reservations older than `tasks.unknown_release_after_hours` (each at most once, whichever
    /// replica gets there first).
    pub async fn release_unknown(&self) {
        let hours = self
            .config
            .current()
            .settings
            .tasks
            .unknown_release_after_hours;
        let Ok(list) = self.store.reservations().await else {
            return;
        };
        let now = self.clock.now();
        let limit = jiff::SignedDuration::from_secs(
            i64::try_from(hours.saturating_mul(3600)).unwrap_or(i64::MAX),
        );
        for r in list.into_iter().filter(|r| r.state == "unknown") {
            let Ok(made) = r.created_at.parse::<jiff::Timestamp>() else {
                continue;
            };
            if now.duration_since(made) < limit {
                continue;
            }
            if let Ok(Some(released)) = self.store.resolve(&r.id, Resolution::Release).await {
                self.metrics.lifecycle.reservations_auto_released.inc();
                tracing::warn!(
                    id = %released.id,
                    request_id = %released.request_id,
                    user = %released.user,
                    team = %released.team,
                    estimate = released.estimate,
                    created_at = %released.created_at,
                    hours,
                    "released an unknown reservation nobody settled within tasks.unknown_release_after_hours: if Vidu \
                     did create that task, its credits are now missing from the budgets"
                );
                // The audit trail's line and entry, as every audited action has them.
                crate::audit::record(
                    &self.store,
                    crate::audit::entry(
                        now,
                        "reservation_auto_released",
                        crate::audit::GATEWAY,
                        "released",
                        serde_json::json!({
                            "id": released.id,
                            "request_id": released.request_id,
                            "user": released.user,
                            "team": released.team,
                            "estimate": released.estimate,
                            "created_at": released.created_at,
                            "after_hours": hours,
                        }),
                    ),
                );
            }
        }
    }
}
