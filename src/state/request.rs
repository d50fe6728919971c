//! What one admission decision is asked: every bucket of the request as data (rates, slots, budgets — lists of
//! specs, not one code path per bucket kind), who asks, and the plan of how the request may run.

use std::fmt;
use std::num::NonZeroU32;

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

impl BudgetKey {
    /// Every budget a reservation of `record` counts against (running off-peak or not): the user's day, month
    /// and (immediate runs only) immediate day; the team's day and month (when it has a team); the global day
    /// and month. A backend keeps each of these exact whether or not the request that made the reservation
    /// named it (a budget added by a reload counts what was spent before it).
    pub fn counting(record: &RequestRecord, off_peak: bool) -> Vec<BudgetKey> {
        let key = |scope, subject: &str, period, period_key: &str| BudgetKey {
            scope,
            subject: subject.to_owned(),
            period,
            period_key: period_key.to_owned(),
        };
        let mut keys = Vec::with_capacity(7);
        keys.push(key(Scope::User, &record.user, Period::Day, &record.day));
        keys.push(key(Scope::User, &record.user, Period::Month, &record.month));
        if !off_peak {
            keys.push(key(
                Scope::User,
                &record.user,
                Period::ImmediateDay,
                &record.day,
            ));
        }
        if !record.team.is_empty() {
            keys.push(key(Scope::Team, &record.team, Period::Day, &record.day));
            keys.push(key(Scope::Team, &record.team, Period::Month, &record.month));
        }
        keys.push(key(Scope::Global, "", Period::Day, &record.day));
        keys.push(key(Scope::Global, "", Period::Month, &record.month));
        keys
    }
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

/// Who asked, when (the periods in the policy time zone) and for which model: what the ledger records with
/// a reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub request_id: String,
    pub user: String,
    pub team: String,
    pub day: String,
    pub month: String,
    pub model: String,
}

/// A request refused before or at admission, for the usage report's rejection counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectionRecord {
    pub user: String,
    pub team: String,
    pub day: String,
    /// The answer's reason (`TooManyRequests`, `Forbidden`, …).
    pub reason: String,
}

/// One way to run the request: immediately or off-peak, and what that costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub off_peak: bool,
    pub estimate: u64,
}

/// How the request may run.
#[derive(Clone, Debug)]
pub enum Plan {
    /// Policy settled it before asking: this run or nothing.
    Fixed(Run),
    /// The `fallback` rule, whose one open question only the store can answer atomically: does the user's
    /// immediate budget still cover the immediate estimate? Policy has answered everything else (the hour
    /// window from the time, `Prefer: off-peak=never`, whether the model can run off-peak) for both answers.
    Fallback(Fallback),
}

#[derive(Clone, Debug)]
pub struct Fallback {
    /// The user's immediate daily budget. It counts an immediate run only.
    pub immediate_budget: BudgetSpec,
    /// What the request costs run immediately.
    pub immediate_estimate: u64,
    /// The run when the immediate budget covers the immediate estimate; `None`: policy refuses the request then.
    pub if_covered: Option<Run>,
    /// The run when it does not; `None`: policy refuses the request then.
    pub if_short: Option<Run>,
}

/// The running-task slots of a request: tasks created and not yet ended, counted per user, team and globally
/// whether or not a limit applies (a limit added by a reload counts what already runs). A run holds a slot
/// unless it is off-peak and `offpeak_holds` is off.
#[derive(Clone, Debug)]
pub struct RunningSpec {
    /// A slot is freed when nothing is heard of its task for this long (`tasks.running_slot_ttl_secs`).
    pub ttl_ms: u64,
    /// Whether an off-peak run holds a slot (`tasks.offpeak_holds_slot`).
    pub offpeak_holds: bool,
    /// User and team caps (`max_running_tasks`, `team_max_running_tasks`).
    pub limits: Vec<SlotSpec>,
    /// The global cap, shared fairly between teams.
    pub share: Option<ShareSpec>,
}

impl RunningSpec {
    /// A request that takes no running-task slot (a spooled admission written back: it already ran).
    pub fn none() -> Self {
        Self {
            ttl_ms: 0,
            offpeak_holds: false,
            limits: Vec::new(),
            share: None,
        }
    }

    /// Whether `run` holds a running-task slot (a `ttl_ms` of 0 holds none).
    pub fn holds(&self, run: Run) -> bool {
        self.ttl_ms > 0 && (!run.off_peak || self.offpeak_holds)
    }
}

/// A share group: a team listed under `[policy.teams]`, or the pool of every team not listed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ShareGroup {
    Team(String),
    Pool,
}

/// `[policy.global] max_running_tasks` with its fair share: the requesting group's guarantee and every other
/// group's (each listed team and the pool), so the decision can tell which guarantees are unused.
#[derive(Clone, Debug)]
pub struct ShareSpec {
    pub max: u32,
    pub source: String,
    pub group: ShareGroup,
    pub guarantee: u32,
    /// Where the guarantee comes from (`policy.teams.x.task_share = 2 of 5`), for messages.
    pub guarantee_source: String,
    /// Every other group and its guarantee.
    pub others: Vec<(ShareGroup, u32)>,
    /// A group with no running task that has not asked for one for this long is idle
    /// (`tasks.fair_share_idle_secs`).
    pub idle_ms: u64,
}

/// Which scopes' limits only observe (`enforce = "shadow"`): a request they would refuse is admitted, and the
/// refusal reported beside the grant ([`Granted::shadowed`](super::Granted)). A shadow bucket that would refuse
/// takes nothing (as an enforced refusal would not): its counts stay what enforcing it would make them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shadow {
    pub user: bool,
    pub team: bool,
    pub global: bool,
}

impl Shadow {
    pub fn of(self, scope: Scope) -> bool {
        match scope {
            Scope::User => self.user,
            Scope::Team => self.team,
            Scope::Global => self.global,
        }
    }
}

/// Everything one all-or-nothing decision covers.
#[derive(Clone, Debug)]
pub struct AdmissionRequest {
    pub record: RequestRecord,
    pub plan: Plan,
    pub rates: Vec<RateSpec>,
    pub slots: Vec<SlotSpec>,
    pub running: RunningSpec,
    /// Scopes whose limits only observe.
    pub shadow: Shadow,
    /// Budgets every run counts against (a fallback plan adds its immediate budget to an immediate run).
    pub budgets: Vec<BudgetSpec>,
}

impl AdmissionRequest {
    /// Every budget the decision may read.
    pub fn budget_keys(&self) -> impl Iterator<Item = &BudgetKey> {
        let immediate = match &self.plan {
            Plan::Fixed(_) => None,
            Plan::Fallback(f) => Some(&f.immediate_budget.key),
        };
        self.budgets.iter().map(|b| &b.key).chain(immediate)
    }
}

/// Whether a decision takes what it grants or only says what would happen (the quote).
/// A request admitted while the backend could not be reached (`fail_open`), and how it ended: spooled by the
/// replica, then recorded with [`Admissions::record_unaccounted`](super::Admissions::record_unaccounted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unaccounted {
    /// The grant the replica made up for it; the backend records each id at most once.
    pub id: super::GrantId,
    pub record: RequestRecord,
    pub run: Run,
    pub settlement: super::Settlement,
    /// When it was admitted (RFC 3339), for the task's record.
    pub admitted_at: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Take,
    DryRun,
}
