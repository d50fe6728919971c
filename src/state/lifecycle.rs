//! Tasks followed to their end: the task record and its states, what one observed state does to it (and to the
//! money: the final credits charged, or everything refunded to the period the task was created in), the relay
//! outbox, the reconciler's claims, callback nonces, and reservations whose outcome is unknown.
//!
//! The rules here are the memory backend's; `redis/observe.lua` applies the same ones in one script.

use serde::Serialize;

/// A task's state as Vidu reports it. Terminal: `success`, `failed`, `cancelled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Created,
    Queueing,
    Processing,
    Success,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Created,
        TaskState::Queueing,
        TaskState::Processing,
        TaskState::Success,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Created => "created",
            TaskState::Queueing => "queueing",
            TaskState::Processing => "processing",
            TaskState::Success => "success",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Vidu's word for a state; `None` for one the gateway does not know (treated as "not ended yet").
    /// `canceled` and `expired` (an off-peak task Vidu did not run in time) are `cancelled`.
    pub fn parse(s: &str) -> Option<TaskState> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "created" => TaskState::Created,
            "queueing" | "queuing" | "queued" => TaskState::Queueing,
            "processing" | "running" => TaskState::Processing,
            "success" | "succeeded" => TaskState::Success,
            "failed" | "failure" => TaskState::Failed,
            "cancelled" | "canceled" | "expired" => TaskState::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Success | TaskState::Failed | TaskState::Cancelled
        )
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the relay of a task's state changes stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RelayStatus {
    /// A state change waits to be delivered (or is being retried).
    Pending,
    /// The last state change was delivered (the team's endpoint answered 2xx).
    Delivered,
    /// A state change was given up after `callbacks.relay_attempts`.
    Failed,
}

impl RelayStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayStatus::Pending => "pending",
            RelayStatus::Delivered => "delivered",
            RelayStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<RelayStatus> {
        Some(match s {
            "pending" => RelayStatus::Pending,
            "delivered" => RelayStatus::Delivered,
            "failed" => RelayStatus::Failed,
            _ => return None,
        })
    }
}

/// A task the gateway created, with its lifecycle. Times are RFC 3339 (UTC, milliseconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TaskRecord {
    pub task_id: String,
    pub request_id: String,
    pub user: String,
    pub team: String,
    pub model: String,
    pub off_peak: bool,
    /// What admission reserved.
    pub estimate: u64,
    /// What the task costs: Vidu's `credits` at creation, its final `credits` on success, 0 once refunded.
    pub charged: u64,
    /// Credits given back to the budgets (failed or cancelled tasks).
    pub refunded: u64,
    pub state: TaskState,
    /// The caller's `callback_url`, relayed to (when relaying is on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayStatus>,
}

/// How a task was created, as its creation settles (`Settlement::Charged`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    pub task_id: String,
    /// The state in Vidu's create answer (`created` when it names none the gateway knows).
    pub state: TaskState,
    /// The caller's `callback_url` when the gateway relays to it.
    pub callback_url: Option<String>,
}

/// A state of a task learned from Vidu (a query answer: the reconciler's, a caller's, or one confirming a
/// callback), or from a cancel Vidu accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub task_id: String,
    pub state: TaskState,
    /// The task's `credits` in the answer (the final figure on success).
    pub credits: Option<u64>,
    /// The body relayed to the caller's `callback_url` (Vidu's query answer, as Vidu would send it).
    pub body: String,
}

/// What an observation changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: TaskState,
    /// The record after the change.
    pub task: TaskRecord,
    /// Credits given back by this change.
    pub refunded: u64,
    /// Change of the charge on success (final credits − credits at creation).
    pub adjusted: i64,
    /// A relay of this change was queued.
    pub relay_queued: bool,
}

/// The money side of a state change: `None` when nothing changes (already ended, or the same state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Money {
    pub charged: u64,
    pub refunded: u64,
    /// What every budget of the task's creation period moves by.
    pub delta: i64,
}

/// The rule both backends apply: an ended task never changes again; success charges the final credits (the
/// charge at creation when the answer names none); failed and cancelled give everything charged back.
pub fn money_of(current: TaskState, charged: u64, observed: &Observation) -> Option<Money> {
    if current.is_terminal() || observed.state == current {
        return None;
    }
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    Some(match observed.state {
        TaskState::Success => {
            let fin = observed.credits.unwrap_or(charged);
            Money {
                charged: fin,
                refunded: 0,
                delta: signed(fin) - signed(charged),
            }
        }
        TaskState::Failed | TaskState::Cancelled => Money {
            charged: 0,
            refunded: charged,
            delta: -signed(charged),
        },
        _ => Money {
            charged,
            refunded: 0,
            delta: 0,
        },
    })
}

/// Which tasks `GET /gateway/v1/tasks` lists: newest first, `limit` per page, after `cursor`.
#[derive(Clone, Debug, Default)]
pub struct TaskQuery {
    pub user: Option<String>,
    pub team: Option<String>,
    pub state: Option<TaskState>,
    pub limit: usize,
    /// The previous page's last task: `created_at` and `task_id`.
    pub after: Option<(String, String)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskPage {
    pub tasks: Vec<TaskRecord>,
    /// Set when there may be more: the last task's `created_at` and `task_id`.
    pub next: Option<(String, String)>,
}

/// The reconciler asking for the tasks it should query now.
#[derive(Clone, Debug)]
pub struct DueClaim {
    /// The replica asking; the reconciler's lease is held by one replica at a time.
    pub holder: String,
    pub lease_ms: u64,
    /// Tasks not heard of for this long are due.
    pub quiet_ms: u64,
    /// Queries per minute, all replicas together.
    pub per_minute: u32,
}

/// One state change to deliver to a caller's `callback_url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayJob {
    pub id: String,
    pub task_id: String,
    pub team: String,
    pub url: String,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: u32,
    /// When the change was observed (ms): a task's relays are delivered one at a time, in this order.
    pub created_ms: i64,
}

/// How a delivery attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayOutcome {
    Delivered,
    /// Try again after this long.
    Retry {
        after_ms: u64,
    },
    GaveUp,
}

/// A reservation not settled: open (the request is in flight) or `unknown` (Vidu's answer was lost).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReservationView {
    /// The grant's id, which settle and release name.
    pub id: String,
    pub request_id: String,
    pub user: String,
    pub team: String,
    pub model: String,
    pub off_peak: bool,
    pub estimate: u64,
    /// `open` or `unknown`.
    pub state: &'static str,
    pub created_at: String,
}

/// How an admin (or the automatic release) resolves an `unknown` reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Vidu charged this much (the task exists).
    Settle(u64),
    /// Nothing was created.
    Release,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(state: TaskState, credits: Option<u64>) -> Observation {
        Observation {
            task_id: "t".into(),
            state,
            credits,
            body: String::new(),
        }
    }

    #[test]
    fn money_follows_the_task() {
        use TaskState::*;
        assert_eq!(
            money_of(Created, 40, &seen(Success, Some(30))),
            Some(Money {
                charged: 30,
                refunded: 0,
                delta: -10
            })
        );
        assert_eq!(
            money_of(Processing, 40, &seen(Success, None)),
            Some(Money {
                charged: 40,
                refunded: 0,
                delta: 0
            })
        );
        assert_eq!(
            money_of(Processing, 40, &seen(Failed, Some(40))),
            Some(Money {
                charged: 0,
                refunded: 40,
                delta: -40
            })
        );
        assert_eq!(
            money_of(Queueing, 40, &seen(Cancelled, None)).map(|m| m.refunded),
            Some(40)
        );
        assert_eq!(
            money_of(Created, 40, &seen(Processing, None)).map(|m| m.delta),
            Some(0)
        );
        assert_eq!(money_of(Success, 40, &seen(Failed, None)), None, "ended");
        assert_eq!(money_of(Failed, 0, &seen(Success, Some(9))), None, "ended");
        assert_eq!(
            money_of(Processing, 40, &seen(Processing, None)),
            None,
            "same"
        );
    }

    #[test]
    fn vidus_words_for_states() {
        for s in TaskState::ALL {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
        }
        assert_eq!(TaskState::parse("canceled"), Some(TaskState::Cancelled));
        assert_eq!(TaskState::parse("expired"), Some(TaskState::Cancelled));
        assert_eq!(TaskState::parse("dreaming"), None);
    }
}

/// Tasks holding a running-task slot now (in flight, created and not ended, or unknown), per team and user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunningNow {
    pub total: u32,
    /// Teams with a running task (users without a team are counted in `total` only).
    pub teams: std::collections::BTreeMap<String, u32>,
    pub users: std::collections::BTreeMap<String, u32>,
}
