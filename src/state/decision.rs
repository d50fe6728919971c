//! What a decision answers, and how a granted request ends.

use std::fmt;

use super::lifecycle::{Created, TaskState};
use super::rate::Exhausted;
use super::request::{BudgetKey, Run, Scope, ShareGroup};

/// A grant's identity: a random UUID (v4), unique across processes and replicas, so any backend instance can
/// finish a grant another one made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrantId(uuid::Uuid);

impl GrantId {
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl std::str::FromStr for GrantId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// What an admitted request owes the store: one `finish`, which frees its slots and settles its reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    id: GrantId,
    accounted: bool,
}

impl Grant {
    pub fn new(id: GrantId) -> Self {
        Self {
            id,
            accounted: true,
        }
    }

    /// A request admitted without the backend (`state.on_unavailable = "fail_open"`): nothing was taken, so
    /// there is nothing to give back.
    pub fn unaccounted() -> Self {
        Self::unaccounted_as(GrantId::random())
    }

    /// An unaccounted grant with a given id (the one the backend was asked to use).
    pub fn unaccounted_as(id: GrantId) -> Self {
        Self {
            id,
            accounted: false,
        }
    }

    pub fn id(&self) -> GrantId {
        self.id
    }

    pub fn is_accounted(&self) -> bool {
        self.accounted
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

/// An admitted request (or, in a dry run, an admissible one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted {
    /// `None` in a dry run.
    pub grant: Option<Grant>,
    /// The tightest remaining budget after this request's reservation.
    pub remaining_credits: Option<u64>,
    /// The tightest remaining *team* budget after it (the team metric reports this, never a member's own).
    pub team_remaining_credits: Option<u64>,
    pub rate: Option<RateStatus>,
    /// What limits under `enforce = "shadow"` would have refused (in check order); the request was admitted.
    pub shadowed: Vec<Refusal>,
}

/// Why admission refused, in check order: the plan, then in-flight slots, running-task slots, budgets, rates. A refused request
/// takes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A fallback plan left no run for the immediate budget's answer (policy refuses; `Decision::immediate_used`
    /// says what the budget held).
    NoRun,
    Concurrency {
        scope: Scope,
        max: u32,
        source: String,
    },
    /// A running-task cap is reached (user, team, or the global one with its fair share).
    Running {
        scope: Scope,
        /// The team or user (`""` globally).
        subject: String,
        max: u32,
        /// Tasks running in that scope now.
        running: u32,
        source: String,
        /// Global only: a slot is free, but the requesting group is at or over its fair share and the free
        /// slots are owed to groups under theirs.
        share: Option<ShareRefusal>,
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
        exhausted: Exhausted,
        retry_after_secs: u64,
        source: String,
    },
}

/// Why the fair share kept a free global slot from a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareRefusal {
    pub group: ShareGroup,
    /// The group's running tasks and guarantee.
    pub running: u32,
    pub guarantee: u32,
    pub guarantee_source: String,
    pub free: u32,
    /// The other active groups' unused guarantees.
    pub owed: u32,
}

/// The answer to one admission request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The run decided on: the plan's, or the one a fallback plan's budget answer chose. `None` only with
    /// `Refusal::NoRun`.
    pub run: Option<Run>,
    /// For a fallback plan: the credits the immediate budget held when the store decided.
    pub immediate_used: Option<u64>,
    pub outcome: Result<Granted, Refusal>,
}

/// How a reservation ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Vidu created the task and reported `credits`.
    Charged {
        credits: u64,
        /// The task Vidu created (`None` when its answer named no task id).
        task: Option<Created>,
    },
    /// Vidu refused, or the request provably never reached Vidu.
    Released,
    /// The outcome is unknown (timeout, connection broke after sending): the reservation is kept for
    /// reconciliation, never silently released.
    Unknown,
}

impl Settlement {
    /// Charged `credits` for a task in state `created` that is relayed to nobody.
    pub fn charged(credits: u64, task_id: Option<&str>) -> Self {
        Settlement::Charged {
            credits,
            task: task_id.map(|id| Created {
                task_id: id.to_owned(),
                state: TaskState::Created,
                callback_url: None,
            }),
        }
    }

    /// The id of the task this settlement creates.
    pub fn task_id(&self) -> Option<&str> {
        match self {
            Settlement::Charged {
                task: Some(task), ..
            } => Some(&task.task_id),
            _ => None,
        }
    }
}
