//! The replica heartbeat: publishes this replica's config version to the state backend every few seconds, keeps
//! the latest view of every live replica's version (for `/readyz` and `config_replicas_disagree`), and reports a
//! backend that came back without its data (a Redis restarted without persistence) at ERROR.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::LiveConfig;
use crate::metrics::Metrics;
use crate::state::{Replicas, Store};

/// How often a replica publishes its config version (a replica not heard of for 30 s is dropped).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// This replica's id and the latest heartbeat's view of its peers.
pub struct ReplicaView {
    id: String,
    latest: RwLock<Option<Replicas>>,
}

impl ReplicaView {
    pub fn new() -> Self {
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            latest: RwLock::new(None),
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
        match store.heartbeat(&self.id, &current.version).await {
            Ok(replicas) => {
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

impl Default for ReplicaView {
    fn default() -> Self {
        Self::new()
    }
}
