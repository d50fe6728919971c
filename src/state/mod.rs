//! The store: admission state (rate limits, in-flight slots, credit budgets, reservations), task ownership and
//! the usage ledger, behind one asynchronous contract that a process-local backend (`memory`) and a shared one
//! (Redis, several replicas) both implement.
//!
//! The contract has three parts:
//! - [`Admissions`], the hot path: `admit` decides over every bucket of a request at once — all-or-nothing, or
//!   with [`Mode::DryRun`] only saying what would happen — and `finish` frees a grant's slots and settles its
//!   reservation in one call. A shared backend answers each with one atomic server-side script: one round trip
//!   per decision, no read-then-write from the replica.
//! - [`Records`] and [`Reports`]: rejections and task ownership; budgets used and per-day usage.
//! - [`Health`]: whether the backend answers, and making what was recorded durable at shutdown.
//!
//! Every method returns a boxed future: a network backend cannot answer synchronously on an actix worker, and
//! boxing keeps the contract object-safe (`Arc<dyn Store>`). What to do when the backend cannot answer
//! (`state.on_unavailable`) is decided once, by the [`fail_open::FailOpen`] wrapper, not by its callers.

pub mod audit;
pub mod decision;
pub mod error;
pub mod fail_open;
pub mod file_guard;
pub mod idempotency;
pub mod ledger;
pub mod ledger_audit;
pub mod ledger_idempotency;
pub mod ledger_tasks;
pub mod lifecycle;
pub mod memory;
pub mod priority;
pub mod rate;
mod reader;
pub mod redis;
pub mod request;
pub mod share;
pub mod spool;
pub mod writer;

#[cfg(test)]
pub mod conformance;
#[cfg(test)]
pub mod conformance_idempotency;

use futures_util::future::BoxFuture;

pub use audit::{AuditEntry, AuditPage, AuditQuery};
pub use decision::{
    Decision, Grant, GrantId, Granted, RateStatus, Refusal, Settlement, ShareRefusal,
};
pub use error::StoreError;
pub use idempotency::{Claim, IdemClaim, IdemKey, StoredAnswer};
pub use ledger::{UsageFilter, UsageRow};
pub use lifecycle::{
    Created, DueClaim, Observation, RelayJob, RelayOutcome, RelayStatus, ReservationView,
    Resolution, RunningNow, TaskPage, TaskQuery, TaskRecord, TaskState, Transition,
};
pub use request::{
    AdmissionRequest, BudgetKey, BudgetSpec, Fallback, Mode, Period, Plan, RateSpec,
    RejectionRecord, RequestRecord, Run, RunningSpec, Scope, Shadow, ShareGroup, ShareSpec,
    SlotSpec, Unaccounted,
};

/// A page of a listing read one item past `limit` (to know whether there are more): the first `limit` items, and
/// the key (`at`, `id`) of the last one when more follow — where the next page starts.
pub fn page_of<T>(
    mut items: Vec<T>,
    limit: usize,
    key: impl Fn(&T) -> (String, String),
) -> (Vec<T>, Option<(String, String)>) {
    if items.len() <= limit {
        return (items, None);
    }
    items.truncate(limit);
    let next = items.last().map(key);
    (items, next)
}

/// What every store call returns: a boxed future of its answer (boxed, so that the traits stay object-safe).
pub type Answer<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// The hot path.
pub trait Admissions {
    /// Checks the plan and every bucket, then takes everything (slots, the estimate reserved against every
    /// budget, rate tokens) or nothing. With [`Mode::DryRun`] it takes nothing and grants no [`Grant`].
    fn admit<'a>(&'a self, request: &'a AdmissionRequest, mode: Mode) -> Answer<'a, Decision> {
        self.admit_as(request, mode, GrantId::random())
    }

    /// [`admit`](Self::admit), with the id the grant gets if one is granted (made by the caller, unique across
    /// replicas): a caller that loses the answer (a timeout) can still name the grant the backend may have made.
    fn admit_as<'a>(
        &'a self,
        request: &'a AdmissionRequest,
        mode: Mode,
        grant: GrantId,
    ) -> Answer<'a, Decision>;

    /// Frees the grant's slots and settles its reservation, at most once per grant (a second call, or a grant
    /// the backend does not hold, does nothing).
    fn finish(&self, grant: Grant, settlement: Settlement) -> Answer<'_, ()>;

    /// Records a request admitted without the backend (`fail_open`, spooled) with how it ended, at most once per
    /// id: its credits count against every budget it would have counted against, usage shows it (admitted, and
    /// settled, released or unknown), and its task gets its owner. No limit is checked: it already ran.
    fn record_unaccounted<'a>(&'a self, entry: &'a Unaccounted) -> Answer<'a, ()>;
}

/// What happened, for the record.
pub trait Records {
    fn record_rejection(&self, rejection: RejectionRecord) -> Answer<'_, ()>;

    /// A task the gateway created, with its owner (the first, if the upstream ever hands out an id twice) and
    /// its lifecycle.
    fn task<'a>(&'a self, task_id: &'a str) -> Answer<'a, Option<TaskRecord>>;
}

/// Tasks followed to their end (`lifecycle.rs`): each method is one atomic decision of the backend.
pub trait Lifecycle {
    /// Applies a state learned from Vidu to the task, at most once per change: an ended task never changes
    /// again. Success charges the final credits; failed and cancelled refund everything charged to the budgets
    /// of the period the task was created in. A relay of the change is queued when the task has a
    /// `callback_url`. The task counts as heard of now either way. `None`: nothing changed (or no such task).
    fn observe<'a>(&'a self, seen: &'a Observation) -> Answer<'a, Option<Transition>>;

    /// Tasks, newest first.
    fn tasks<'a>(&'a self, query: &'a TaskQuery) -> Answer<'a, TaskPage>;

    /// Records a callback's nonce for `ttl_secs`; `false` when it was seen already (a replay).
    fn claim_nonce<'a>(&'a self, nonce: &'a str, ttl_secs: u64) -> Answer<'a, bool>;

    /// Makes an unfinished task due for the reconciler `after_ms` from now unless a state of it is learned before
    /// (a callback said it changed, and its own confirming query is on its way): if the replica that took the
    /// callback stops, or the query fails, another one asks.
    fn nudge<'a>(&'a self, task_id: &'a str, after_ms: u64) -> Answer<'a, ()>;

    /// The unfinished tasks the reconciler should query now — those a callback made due, then the ones heard of
    /// least lately (`quiet_ms`; `u64::MAX`: none by quiet) — empty unless `claim.holder` holds
    /// (or takes) the reconciler's lease, and never more than `claim.per_minute` in any minute. The tasks
    /// claimed count as heard of now, so a query that fails is retried after the quiet time, not at once.
    fn claim_due<'a>(&'a self, claim: &'a DueClaim) -> Answer<'a, Vec<String>>;

    /// Relays due now, at most `limit`; each is leased for `lease_ms` (no other replica delivers it meanwhile).
    fn claim_relays(&self, limit: usize, lease_ms: u64) -> Answer<'_, Vec<RelayJob>>;

    /// Records how a delivery attempt ended (on the task too).
    fn relay_done<'a>(&'a self, job: &'a RelayJob, outcome: RelayOutcome) -> Answer<'a, ()>;

    /// Reservations not settled: open ones (in flight) and `unknown` ones, oldest first.
    fn reservations(&self) -> Answer<'_, Vec<ReservationView>>;

    /// Settles or releases an `unknown` reservation, once; `None` when `id` names no unknown reservation.
    fn resolve<'a>(&'a self, id: &'a str, how: Resolution) -> Answer<'a, Option<ReservationView>>;

    /// Credits the tasks created since `since` are charged now (refunds netted): the burn rate's figure.
    fn charged_since(&self, since: jiff::Timestamp) -> Answer<'_, u64>;

    /// The running-task slots held now (those whose time ran out without news are freed first).
    fn running(&self) -> Answer<'_, RunningNow>;
}

/// `Idempotency-Key` on creates (`idempotency.rs`): each method is one atomic decision of the backend.
pub trait Idempotency {
    /// Takes the key for this request (`Claimed`), unless its record says otherwise: another request with the same
    /// body holds it (`InFlight`; a lapsed lease counts as no record), its record has another body (`Reused`), or
    /// its answer is stored (`Replay`, until `ttl_secs` after it was stored).
    fn claim<'a>(&'a self, claim: &'a IdemClaim) -> Answer<'a, Claim>;

    /// The request was refused before it was forwarded: frees the key, if this claim still holds it.
    fn abandon<'a>(&'a self, claim: &'a IdemClaim) -> Answer<'a, ()>;

    /// Stores the request's answer for `ttl_secs`, unless another request holds the key now (`false`: not stored).
    fn keep<'a>(
        &'a self,
        claim: &'a IdemClaim,
        answer: &'a StoredAnswer,
        ttl_secs: u64,
    ) -> Answer<'a, bool>;
}

/// The audit trail (`audit.rs`).
pub trait Audit {
    /// Keeps an entry (the caller has logged it on the `audit` target).
    fn audit(&self, entry: AuditEntry) -> Answer<'_, ()>;

    /// Entries, newest first.
    fn audit_entries<'a>(&'a self, query: &'a AuditQuery) -> Answer<'a, AuditPage>;
}

/// What was spent (the usage API and CLI).
pub trait Reports {
    /// Credits used (settled + reserved + unknown) in each budget, in order.
    fn used<'a>(&'a self, keys: &'a [BudgetKey]) -> Answer<'a, Vec<u64>>;

    /// Usage per day for the filter, including everything recorded before the call.
    fn usage<'a>(&'a self, filter: &'a UsageFilter) -> Answer<'a, Vec<UsageRow>>;
}

pub trait Health {
    /// Whether the backend answers (for `/readyz`).
    fn health(&self) -> Answer<'_, ()>;

    /// Publishes this replica's config version and answers every live replica's (replicas that disagree are
    /// reported, not reconciled), and whether the backend lost what it held since the last heartbeat.
    fn heartbeat<'a>(&'a self, replica: &'a str, version: &'a str) -> Answer<'a, Replicas>;

    /// Makes everything recorded so far durable (called at shutdown).
    fn flush(&self) -> Answer<'_, ()>;

    /// Requests admitted without the backend (`fail_open`) and not yet written back to it; `None` when nothing
    /// is spooled here.
    fn spool_depth(&self) -> Option<u64> {
        None
    }
}

/// The replicas sharing a backend, as a heartbeat sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replicas {
    /// Config version per live replica (one process: itself).
    pub versions: std::collections::BTreeMap<String, String>,
    /// The backend came back without the state it held (a Redis restarted without persistence).
    pub data_lost: bool,
    /// The backend's own time when it answered (a shared backend's clock, which budget periods follow).
    pub backend_now: Option<jiff::Timestamp>,
}

impl Replicas {
    /// Whether the live replicas run different configurations.
    pub fn disagree(&self) -> bool {
        let mut versions = self.versions.values();
        versions
            .next()
            .is_some_and(|first| versions.any(|v| v != first))
    }
}

/// A whole backend, shared by every worker.
pub trait Store:
    Admissions + Records + Lifecycle + Idempotency + Audit + Reports + Health + Send + Sync
{
}

impl<T: Admissions + Records + Lifecycle + Idempotency + Audit + Reports + Health + Send + Sync>
    Store for T
{
}
