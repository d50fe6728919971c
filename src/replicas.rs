//! The replica heartbeat: publishes this replica's config version to the state backend every few seconds, keeps
//! the latest view of every live replica's version (for `/readyz` and `config_replicas_disagree`), and reports a
//! backend that came back without its data (a Redis restarted without persistence) at ERROR.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::clock::AlignedClock;
use crate::config::LiveConfig;
use crate::metrics::Metrics;
use crate::state::{Replicas, Store};

/// How often a replica publishes its config version (a replica not heard of for 30 s is dropped).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// A replica whose clock is further than this from the backend's says so.
const CLOCK_OFF_WARN: jiff::SignedDuration = jiff::SignedDuration::from_secs(1);

/// This replica's id and the latest heartbeat's view of its peers.
pub struct ReplicaView {
    id: String,
    latest: RwLock<Option<Replicas>>,
    /// Set to the backend's time on every heartbeat (a shared backend; `None`: periods follow the local clock).
    aligned: Option<Arc<AlignedClock>>,
}

impl ReplicaView {
    pub fn new(aligned: Option<Arc<AlignedClock>>) -> Self {
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            latest: RwLock::new(None),
            aligned,
        }
    }

    /// This replica's id: unique per process, shown in `/readyz`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the last heartbeat saw (`None` before the first answered).
    pub fn latest(&self) -> Option<Replicas> {
        self.latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One heartbeat: publish, remember the answer, set the gauge, and report lost state.
    pub async fn beat(&self, store: &dyn Store, config: &LiveConfig, metrics: &Metrics) {
        let current = config.current();
        let sent = self.aligned.as_ref().map(|c| c.local());
        match store.heartbeat(&self.id, &current.version).await {
            Ok(replicas) => {
                if let (Some(clock), Some(sent), Some(backend_now)) =
                    (&self.aligned, sent, replicas.backend_now)
                {
                    let before = clock.offset();
                    let offset = clock.align(backend_now, sent, clock.local());
                    if offset.abs() > CLOCK_OFF_WARN && before.abs() <= CLOCK_OFF_WARN {
                        tracing::warn!(
                            offset_ms = offset.as_millis(),
                            "this replica's clock is off the state backend's: budget periods and hour windows \
                             follow the backend's time; check NTP on this host"
                        );
                    }
                }
                if replicas.data_lost {
                    metrics.state_data_lost.inc();
                    tracing::error!(
                        backend = "redis",
                        key_prefix = %current.settings.state.key_prefix,
                        "the state backend came back without the gateway's state: spend recorded in budgets \
                         (usage, reservations), in-flight leases, rate-limit cells and task ownership written \
                         before are lost, so budgets count from zero again and tasks created before cannot be \
                         read or cancelled through the gateway; run Redis with AOF persistence \
                         (appendonly yes, appendfsync everysec) and fail over only to a replica that has the data"
                    );
                }
                let disagree = replicas.disagree();
                metrics.config_replicas_disagree.set(i64::from(disagree));
                metrics.replicas.set(replicas.versions.len() as i64);
                if disagree && !self.latest().is_some_and(|l| l.disagree()) {
                    tracing::warn!(
                        versions = ?replicas.versions,
                        "replicas run different configurations (config version per replica id)"
                    );
                }
                *self.latest.write().unwrap_or_else(|p| p.into_inner()) = Some(replicas);
            }
            Err(e) => {
                tracing::debug!(error = %e, "the replica heartbeat was not answered");
            }
        }
    }

    /// Beats every `every` until the process stops.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        config: Arc<LiveConfig>,
        metrics: Arc<Metrics>,
        every: Duration,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.beat(store.as_ref(), &config, &metrics).await;
        }
    }
}
