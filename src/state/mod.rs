//! Admission state behind one trait: rate limits, in-flight slots, credit budgets, reservations, task ownership
//! and the usage ledger. `admit` takes every bucket of a request at once and decides all-or-nothing, so a
//! shared backend (Redis) can implement it as one atomic server-side script.

pub mod file_guard;
pub mod ledger;
pub mod memory;
pub mod priority;
pub mod rate;
pub mod writer;

use std::fmt;
use std::num::NonZeroU32;

pub use ledger::{TaskRecord, UsageFilter, UsageRow};

/// Who a limit applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    User,
    Team,
    Global,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Team => "team",
            Scope::Global => "global",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    Day,
    Month,
    /// The `fallback` immediate budget: non-off-peak credits per user per day.
    ImmediateDay,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "daily",
            Period::Month => "monthly",
            Period::ImmediateDay => "immediate daily",
        }
    }
}

/// A budget's identity: scope, who, which period.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BudgetKey {
    pub scope: Scope,
    /// user id, team name, or "" for global
    pub subject: String,
    pub period: Period,
    /// `2026-11-25` or `2026-11`
    pub period_key: String,
}

#[derive(Clone, Debug)]
pub struct RateSpec {
    pub scope: Scope,
    pub subject: String,
    pub per_minute: NonZeroU32,
    pub burst: NonZeroU32,
    /// The config key that set it, for messages.
    pub source: String,
}

#[derive(Clone, Debug)]
pub struct SlotSpec {
    pub scope: Scope,
    pub subject: String,
    pub max: u32,
    pub source: String,
}

#[derive(Clone, Debug)]
pub struct BudgetSpec {
    pub key: BudgetKey,
    pub limit: u64,
    pub secs_to_reset: u64,
    pub source: String,
}

/// What the ledger records for an admitted request.
#[derive(Clone, Debug)]
pub struct LedgerEntry {
    pub request_id: String,
    pub user: String,
    pub team: String,
    pub day: String,
    pub month: String,
    pub model: String,
    pub off_peak: bool,
}

#[derive(Clone, Debug)]
pub struct AdmissionRequest {
    pub rates: Vec<RateSpec>,
    pub slots: Vec<SlotSpec>,
    pub budgets: Vec<BudgetSpec>,
    pub estimate: u64,
    pub entry: LedgerEntry,
}

/// Why admission refused, in check order: slots, then budgets, then rates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Concurrency {
        scope: Scope,
        max: u32,
        source: String,
    },
    Budget {
        key: BudgetKey,
        limit: u64,
        used: u64,
        retry_after_secs: u64,
        source: String,
    },
    Rate {
        scope: Scope,
        per_minute: u32,
        burst: u32,
        /// Which part of the limit ran out.
        exhausted: rate::Exhausted,
        retry_after_secs: u64,
        source: String,
    },
    /// The state backend could not be used (e.g. the ledger is not writable).
    Unavailable(String),
}

impl Refusal {
    /// The metric/usage label of this refusal.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Concurrency { .. } => "ConcurrencyLimited",
            Refusal::Budget { .. } => "CreditBudgetExhausted",
            Refusal::Rate { .. } => "TooManyRequests",
            Refusal::Unavailable(_) => "ServiceUnavailable",
        }
    }
}

/// The tightest rate limit after this request, for the `RateLimit` headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateStatus {
    pub scope: Scope,
    pub per_minute: u32,
    pub burst: u32,
    pub remaining: u32,
    pub reset_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// `None` in a dry run.
    pub reservation: Option<i64>,
    /// The tightest remaining budget after this request's reservation.
    pub remaining_credits: Option<u64>,
    /// The tightest remaining *team* budget after this request's reservation (the team metric reports this,
    /// never a member's own budget).
    pub team_remaining_credits: Option<u64>,
    pub rate: Option<RateStatus>,
}

/// How a reservation ends.
#[derive(Clone, Debug)]
pub enum Settlement {
    /// Vidu created the task and reported `credits`.
    Charged {
        credits: u64,
        task_id: Option<String>,
    },
    /// Vidu refused, or the request provably never reached Vidu.
    Released,
    /// The outcome is unknown (timeout, connection broke after sending): the reservation is kept for
    /// reconciliation, never silently released.
    Unknown,
}

pub trait AdmissionStore: Send + Sync {
    /// Checks every bucket; admits all-or-nothing (taking slots, reserving the estimate, consuming rate tokens),
    /// or, with `dry_run`, only says what would happen.
    fn admit(&self, req: &AdmissionRequest, dry_run: bool) -> Result<Grant, Refusal>;
    /// Frees the in-flight slots a grant took.
    fn release_slots(&self, slots: &[SlotSpec]);
    fn settle(&self, reservation: i64, settlement: Settlement);
    /// Credits used (settled + reserved + unknown) in one budget.
    fn used(&self, key: &BudgetKey) -> Result<u64, String>;
    fn record_rejection(&self, entry: &LedgerEntry, reason: &str);
    fn task(&self, task_id: &str) -> Option<TaskRecord>;
    fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRow>, String>;
    /// Whether the backend answers (for `/readyz`).
    fn health(&self) -> Result<(), String>;
    /// Makes everything recorded so far durable (called at shutdown).
    fn flush(&self);
}
