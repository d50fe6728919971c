//! Prometheus metrics: one registry per running app (no process-global recorder, so tests can run apps side by
//! side), rendered in the text exposition format at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub endpoint: &'static str,
    /// The HTTP status class Vidu answered with (`2xx`, `4xx`, `5xx`), or `timeout` / `unavailable`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub outcome: &'static str,
    pub reason: &'static str,
    pub team: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CreditLabels {
    /// reserved | settled | released | unknown
    pub kind: &'static str,
    pub team: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TeamLabels {
    pub team: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// success | failed | cancelled
    pub state: &'static str,
    pub team: String,
}

/// Following tasks to their end: callbacks in, reconciliation queries, relays out, unknown reservations.
#[derive(Clone, Debug, Default)]
pub struct LifecycleMetrics {
    /// Tasks that reached an end, by state and team.
    pub tasks_ended: Family<TaskLabels, Counter>,
    /// Callbacks received, by outcome (accepted, bad_signature, replayed, unknown_task, unavailable).
    pub callbacks: Family<OutcomeLabels, Counter>,
    /// Queries of unfinished tasks by the reconciler, by outcome (ok, not_found, error).
    pub reconcile_queries: Family<OutcomeLabels, Counter>,
    /// Relay deliveries, by outcome (delivered, retried, gave_up).
    pub relays: Family<OutcomeLabels, Counter>,
    /// `unknown` reservations released after `tasks.unknown_release_after_hours`.
    pub reservations_auto_released: Counter,
    /// `unknown` reservations resolved by an admin, by outcome (settled, released).
    pub reservations_resolved: Family<OutcomeLabels, Counter>,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~53 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: HistogramFamily<RouteLabels>,
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    pub upstream_duration: HistogramFamily<EndpointLabels>,
    pub upstream_secret_scrubbed: Family<EndpointLabels, Counter>,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub config_reloads: Family<OutcomeLabels, Counter>,
    pub jwks_fetches: Family<OutcomeLabels, Counter>,
    pub jwks_keys: Gauge,
    pub ready: Gauge,
    pub admissions: Family<AdmissionLabels, Counter>,
    /// Creates admitted without the state backend (`state.on_unavailable = "fail_open"`).
    pub admissions_unaccounted: Counter,
    /// 1 while the live replicas (by heartbeat) run different configurations.
    pub config_replicas_disagree: Gauge,
    /// Replicas heard from within the last 30 s (this one included).
    pub replicas: Gauge,
    /// Times the state backend was found without the state it held (a Redis that came back empty).
    pub state_data_lost: Counter,
    /// Requests admitted without the state backend (fail_open) waiting in the spool to be written back.
    pub state_spool_depth: Gauge,
    pub credits: Family<CreditLabels, Counter>,
    pub in_flight: Family<TeamLabels, Gauge>,
    pub budget_remaining: Family<TeamLabels, Gauge>,
    /// Tasks holding a running-task slot, by team (read from the state backend at each scrape).
    pub running_tasks: Family<TeamLabels, Gauge>,
    /// Tasks holding a running-task slot, all teams (and users without a team) together.
    pub running_tasks_global: Gauge,
    pub ledger: LedgerMetrics,
    pub lifecycle: LifecycleMetrics,
    pub balance: BalanceMetrics,
    /// Creates with an `Idempotency-Key`, by outcome.
    pub idempotency: Family<OutcomeLabels, Counter>,
}

/// The Vidu account as the balance watch last read it (`GET /ent/v2/credits`), and the burn rate and runway
/// computed from the gateway's own ledger.
#[derive(Clone, Debug, Default)]
pub struct BalanceMetrics {
    pub credits_remaining: Gauge,
    pub concurrency_limit: Gauge,
    pub current_concurrency: Gauge,
    pub queue_count: Gauge,
    /// Credits charged per hour over the last 24 h.
    pub burn_per_hour: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Hours until the balance runs out at that rate.
    pub runway_hours: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub polls: Family<OutcomeLabels, Counter>,
}

/// The ledger writer's figures: shared handles, updated by the writer and checkpointer threads, read by `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct LedgerMetrics {
    /// Writes queued and not yet committed (a crash would lose them).
    pub pending_writes: Gauge,
    pub commits: Counter,
    /// Writes committed (reservations, settlements, rejections).
    pub writes: Counter,
    pub commit_errors: Counter,
    /// WAL pages not yet copied into the database file at the last checkpoint.
    pub wal_pages: Gauge,
    pub checkpoint_errors: Counter,
}

/// A new metric, registered under `name` with its help text.
fn register<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vidu_gateway");
        let http_requests: Family<HttpLabels, Counter> = register(
            &mut registry,
            "http_requests",
            "HTTP requests answered, by route pattern, method and status",
        );
        let http_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time from request received to response headers, by route pattern",
            http_duration.clone(),
        );
        let upstream_requests: Family<UpstreamLabels, Counter> = register(
            &mut registry,
            "upstream_requests",
            "Calls to Vidu (or the sandbox), by endpoint and outcome",
        );
        let upstream_duration: HistogramFamily<EndpointLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "upstream_duration_seconds",
            "Duration of calls to Vidu (or the sandbox), by endpoint",
            upstream_duration.clone(),
        );
        let upstream_secret_scrubbed: Family<EndpointLabels, Counter> = register(
            &mut registry,
            "upstream_secret_scrubbed",
            "Answers from Vidu (or whatever is at upstream.base_url) that contained the enterprise key, which was \
             replaced with [REDACTED] before the answer left the gateway, by endpoint",
        );
        let auth_failures: Family<ReasonLabels, Counter> = register(
            &mut registry,
            "auth_failures",
            "Requests refused with 401, by reason",
        );
        let config_reloads: Family<OutcomeLabels, Counter> = register(
            &mut registry,
            "config_reloads",
            "Configuration reload attempts, by outcome",
        );
        let jwks_fetches: Family<OutcomeLabels, Counter> = register(
            &mut registry,
            "jwks_fetches",
            "JWKS fetches from auth.jwks_url, by outcome (ok, http_status, timeout, connect_error, too_large, invalid)",
        );
        let jwks_keys: Gauge = register(&mut registry, "jwks_keys", "Keys in the JWKS in force");
        let ready: Gauge = register(&mut registry, "ready", "1 when /readyz answers 200");
        let admissions_unaccounted: Counter = register(
            &mut registry,
            "admissions_unaccounted",
            "Creates admitted while the state backend could not decide (state.on_unavailable = fail_open): no limit \
             was checked and nothing was counted",
        );
        let config_replicas_disagree: Gauge = register(
            &mut registry,
            "config_replicas_disagree",
            "1 while the replicas sharing the state backend run different configurations (their config versions differ)",
        );
        let replicas: Gauge = register(
            &mut registry,
            "replicas",
            "Replicas sharing the state backend that published a heartbeat within the last 30 s",
        );
        let state_data_lost: Counter = register(
            &mut registry,
            "state_data_lost",
            "Times the state backend was found without the state it held (a Redis restarted without persistence)",
        );
        let state_spool_depth: Gauge = register(
            &mut registry,
            "state_spool_depth",
            "Requests admitted without the state backend (fail_open) waiting in state.spool_path to be written back",
        );
        let admissions: Family<AdmissionLabels, Counter> = register(
            &mut registry,
            "admissions",
            "Create requests by outcome (admitted, rejected), reason and team",
        );
        let credits: Family<CreditLabels, Counter> = register(
            &mut registry,
            "credits",
            "Credits reserved, settled (Vidu's figure), released and unknown, by team; refunded (failed and \
             cancelled tasks) and adjusted_up / adjusted_down (a success whose final credits differ)",
        );
        let in_flight: Family<TeamLabels, Gauge> = register(
            &mut registry,
            "in_flight",
            "Upstream create calls in flight, by team",
        );
        let budget_remaining: Family<TeamLabels, Gauge> = register(
            &mut registry,
            "budget_remaining_credits",
            "Tightest remaining team budget (team daily/monthly credits) after the team's last admission; teams without a team budget are not reported",
        );
        let running_tasks: Family<TeamLabels, Gauge> = register(
            &mut registry,
            "running_tasks",
            "Tasks created and not yet ended (holding a running-task slot: in flight, running, or unknown), by team; \
             read from the state backend at each scrape",
        );
        let running_tasks_global = Gauge::default();
        registry.register(
            "running_tasks_global",
            "Tasks created and not yet ended for the whole enterprise key (compare with policy.global.max_running_tasks)",
            running_tasks_global.clone(),
        );
        let ledger = LedgerMetrics::default();
        registry.register(
            "ledger_pending_writes",
            "Ledger writes queued and not yet committed",
            ledger.pending_writes.clone(),
        );
        registry.register(
            "ledger_commits",
            "Ledger transactions committed",
            ledger.commits.clone(),
        );
        registry.register(
            "ledger_writes",
            "Ledger writes committed (reservations, settlements, rejections)",
            ledger.writes.clone(),
        );
        registry.register(
            "ledger_commit_errors",
            "Ledger transactions that failed (their writes are lost; /readyz reports it)",
            ledger.commit_errors.clone(),
        );
        registry.register(
            "ledger_wal_pages",
            "WAL pages not yet copied into the ledger file at the last checkpoint",
            ledger.wal_pages.clone(),
        );
        registry.register(
            "ledger_checkpoint_errors",
            "Ledger WAL checkpoints that failed (retried)",
            ledger.checkpoint_errors.clone(),
        );
        let lifecycle = LifecycleMetrics::default();
        registry.register(
            "tasks_ended",
            "Tasks created through the gateway that reached an end (success, failed, cancelled), by team",
            lifecycle.tasks_ended.clone(),
        );
        registry.register(
            "callbacks",
            "Task callbacks received on /gateway/v1/callbacks/vidu, by outcome (accepted, bad_signature, replayed, \
             unknown_task, unavailable)",
            lifecycle.callbacks.clone(),
        );
        registry.register(
            "reconcile_queries",
            "Queries of unfinished tasks made by the reconciler, by outcome (ok, not_found, error)",
            lifecycle.reconcile_queries.clone(),
        );
        registry.register(
            "relays",
            "Deliveries of task states to callers' callback_url, by outcome (delivered, retried, gave_up)",
            lifecycle.relays.clone(),
        );
        registry.register(
            "reservations_auto_released",
            "Unknown reservations released after tasks.unknown_release_after_hours without an admin's decision",
            lifecycle.reservations_auto_released.clone(),
        );
        registry.register(
            "reservations_resolved",
            "Unknown reservations settled or released by an admin, by outcome",
            lifecycle.reservations_resolved.clone(),
        );
        let balance = BalanceMetrics::default();
        for (name, help, gauge) in [
            (
                "vidu_credits_remaining",
                "Credits left on the Vidu account (the sum of remains[].credit_remain of GET /ent/v2/credits)",
                &balance.credits_remaining,
            ),
            (
                "vidu_concurrency_limit",
                "Tasks Vidu runs at once for the organisation",
                &balance.concurrency_limit,
            ),
            (
                "vidu_current_concurrency",
                "Tasks Vidu runs now for the organisation",
                &balance.current_concurrency,
            ),
            (
                "vidu_queue_count",
                "Tasks queued at Vidu for the organisation",
                &balance.queue_count,
            ),
        ] {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "vidu_credits_burn_per_hour",
            "Credits charged per hour over the last 24 h, from the gateway's own ledger",
            balance.burn_per_hour.clone(),
        );
        registry.register(
            "vidu_credits_runway_hours",
            "Hours until the Vidu balance runs out at the burn rate of the last 24 h",
            balance.runway_hours.clone(),
        );
        registry.register(
            "balance_polls",
            "Reads of the Vidu balance (GET /ent/v2/credits), by outcome (ok, error)",
            balance.polls.clone(),
        );
        let idempotency: Family<OutcomeLabels, Counter> = register(
            &mut registry,
            "idempotency",
            "Creates with an Idempotency-Key, by outcome: claimed, replayed, in_flight (409), reused (422), \
             unavailable (the state backend could not answer: 503, or unchecked under fail_open); then per claim \
             stored, abandoned (refused before forwarding, or nothing reached Vidu), not_stored",
        );
        Self {
            registry,
            http_requests,
            http_duration,
            upstream_requests,
            upstream_duration,
            upstream_secret_scrubbed,
            auth_failures,
            config_reloads,
            jwks_fetches,
            jwks_keys,
            ready,
            admissions,
            admissions_unaccounted,
            config_replicas_disagree,
            replicas,
            state_data_lost,
            state_spool_depth,
            credits,
            in_flight,
            budget_remaining,
            running_tasks,
            running_tasks_global,
            ledger,
            lifecycle,
            balance,
            idempotency,
        }
    }

    /// The registry, for modules that register their own families at start-up.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Sets the running-task gauges to what the state backend holds now (teams no longer running drop out).
    pub fn set_running(&self, now: &crate::state::RunningNow) {
        self.running_tasks.clear();
        for (team, n) in &now.teams {
            self.running_tasks
                .get_or_create(&TeamLabels { team: team.clone() })
                .set(i64::from(*n));
        }
        self.running_tasks_global.set(i64::from(now.total));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
