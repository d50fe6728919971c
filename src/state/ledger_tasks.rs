//! The task lifecycle in the SQLite ledger (memory backend): each task's state, charge and refund, its relay
//! status, and the relay outbox, so a restart forgets no task still running and no relay still owed.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::ledger::{Ledger, task_id_reused, where_clause};
use super::{
    GrantId, RelayJob, RelayStatus, RequestRecord, ReservationView, TaskQuery, TaskRecord,
    TaskState,
};

/// Columns added to older ledgers: (table, column, definition).
const COLUMNS: &[(&str, &str, &str)] = &[
    ("reservations", "refunded", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "request_id", "TEXT NOT NULL DEFAULT ''"),
    ("tasks", "estimate", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "refunded", "INTEGER NOT NULL DEFAULT 0"),
    // Tasks written before the lifecycle was followed are taken as ended.
    ("tasks", "state", "TEXT NOT NULL DEFAULT 'success'"),
    ("tasks", "callback_url", "TEXT"),
    ("tasks", "updated_at", "TEXT"),
    ("tasks", "ended_at", "TEXT"),
    ("tasks", "relay", "TEXT"),
    ("tasks", "reservation", "INTEGER"),
    // A callback's due mark (ms), so that a restart does not forget a callback it answered but did not confirm.
    ("tasks", "due_ms", "INTEGER"),
    // The task holds a running-task slot, kept this long (ms) after each news of it.
    ("tasks", "slot_ttl_ms", "INTEGER"),
];

const SCHEMA: &str = "
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at, task_id);
CREATE INDEX IF NOT EXISTS tasks_live ON tasks (task_id) WHERE state NOT IN ('success', 'failed', 'cancelled');
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    team TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL DEFAULT 0
);
";

/// Brings a ledger's task tables to this version.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, definition) in COLUMNS {
        let has: bool = conn.query_row(
            &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
            params![column],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    conn.execute_batch(SCHEMA)
}

/// One change to a task or the outbox, applied by the writer thread with the batch it is in.
#[derive(Debug)]
pub enum TaskWrite {
    /// A task's new state; `money` when its charge changed: the reservation row's credits and refund.
    Changed {
        task_id: String,
        state: TaskState,
        charged: u64,
        refunded: u64,
        updated_at: String,
        ended_at: Option<String>,
        relay: Option<RelayStatus>,
        money: Option<i64>,
    },
    Relay {
        task_id: String,
        status: RelayStatus,
    },
    /// Whether the task holds a running-task slot, and for how long after each news.
    Holds {
        task_id: String,
        slot_ttl_ms: Option<u64>,
    },
    /// A callback's due mark set (`Some`) or cleared.
    Due {
        task_id: String,
        due_ms: Option<i64>,
    },
    OutboxPut {
        job: RelayJob,
        due_ms: i64,
    },
    OutboxRetry {
        id: String,
        attempts: u32,
        due_ms: i64,
    },
    OutboxDone {
        id: String,
    },
}

/// An unfinished task as loaded at start: its record, reservation row and periods.
pub struct LiveRow {
    pub task: TaskRecord,
    pub row: i64,
    pub record: RequestRecord,
    pub due_ms: Option<i64>,
    pub slot_ttl_ms: Option<u64>,
}

impl UnknownRow {
    /// The reservation as listed: its grant's id (`row-<n>` for rows older than grant ids).
    pub fn view(self) -> ReservationView {
        ReservationView {
            id: self
                .grant
                .map(|g| g.to_string())
                .unwrap_or_else(|| format!("row-{}", self.row)),
            request_id: self.record.request_id,
            user: self.record.user,
            team: self.record.team,
            model: self.record.model,
            off_peak: self.off_peak,
            estimate: self.estimate,
            state: if self.open { "open" } else { "unknown" },
            created_at: self.created_at,
        }
    }
}

/// A reservation not settled, as read from the ledger.
pub struct UnknownRow {
    pub row: i64,
    pub grant: Option<GrantId>,
    pub record: RequestRecord,
    pub off_peak: bool,
    pub estimate: u64,
    pub created_at: String,
    /// Still in flight (`reserved`), not `unknown`.
    pub open: bool,
}

const TASK_COLUMNS: &str = "task_id, request_id, user, team, model, off_peak, estimate, credits, refunded, \
                            state, callback_url, created_at, COALESCE(updated_at, created_at), ended_at, relay";
/// [`TASK_COLUMNS`] of the table aliased `t`.
const TASK_COLUMNS_T: &str = "t.task_id, t.request_id, t.user, t.team, t.model, t.off_peak, t.estimate, t.credits, \
                              t.refunded, t.state, t.callback_url, t.created_at, COALESCE(t.updated_at, t.created_at), \
                              t.ended_at, t.relay";

fn task_of(r: &Row<'_>) -> rusqlite::Result<TaskRecord> {
    let n = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0).unsigned_abs()) };
    let state: String = r.get(9)?;
    let relay: Option<String> = r.get(14)?;
    Ok(TaskRecord {
        task_id: r.get(0)?,
        request_id: r.get(1)?,
        user: r.get(2)?,
        team: r.get(3)?,
        model: r.get(4)?,
        off_peak: r.get(5)?,
        estimate: n(6)?,
        charged: n(7)?,
        refunded: n(8)?,
        state: TaskState::parse(&state).unwrap_or(TaskState::Success),
        callback_url: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
        ended_at: r.get(13)?,
        relay: relay.as_deref().and_then(RelayStatus::parse),
    })
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Ledger {
    /// Records a task created for reservation `row`; an id that already has an owner keeps it.
    pub(super) fn record_task(conn: &Connection, t: &TaskRecord, row: i64) -> rusqlite::Result<()> {
        let written = conn
            .prepare_cached(
                "INSERT INTO tasks (task_id, request_id, user, team, model, off_peak, estimate, credits, refunded, \
                 state, callback_url, created_at, updated_at, ended_at, relay, reservation) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) \
                 ON CONFLICT (task_id) DO NOTHING",
            )?
            .execute(params![
                t.task_id,
                t.request_id,
                t.user,
                t.team,
                t.model,
                t.off_peak,
                signed(t.estimate),
                signed(t.charged),
                signed(t.refunded),
                t.state.as_str(),
                t.callback_url,
                t.created_at,
                t.updated_at,
                t.ended_at,
                t.relay.map(RelayStatus::as_str),
                row
            ])?;
        if written == 0 {
            task_id_reused(&t.task_id, &t.user, &t.team);
        }
        Ok(())
    }

    pub(super) fn apply_task(conn: &Connection, w: &TaskWrite, now: &str) -> rusqlite::Result<()> {
        match w {
            TaskWrite::Changed {
                task_id,
                state,
                charged,
                refunded,
                updated_at,
                ended_at,
                relay,
                money,
            } => {
                conn.prepare_cached(
                    "UPDATE tasks SET state = ?2, credits = ?3, refunded = ?4, updated_at = ?5, ended_at = ?6, \
                     relay = COALESCE(?7, relay) WHERE task_id = ?1",
                )?
                .execute(params![
                    task_id,
                    state.as_str(),
                    signed(*charged),
                    signed(*refunded),
                    updated_at,
                    ended_at,
                    relay.map(RelayStatus::as_str)
                ])?;
                if money.is_some() {
                    conn.prepare_cached(
                        "UPDATE reservations SET credits = ?2, refunded = ?3, updated_at = ?4 \
                         WHERE id = (SELECT reservation FROM tasks WHERE task_id = ?1)",
                    )?
                    .execute(params![
                        task_id,
                        signed(*charged),
                        signed(*refunded),
                        now
                    ])?;
                }
            }
            TaskWrite::Holds {
                task_id,
                slot_ttl_ms,
            } => {
                conn.prepare_cached("UPDATE tasks SET slot_ttl_ms = ?2 WHERE task_id = ?1")?
                    .execute(params![task_id, slot_ttl_ms.map(signed)])?;
            }
            TaskWrite::Due { task_id, due_ms } => {
                conn.prepare_cached("UPDATE tasks SET due_ms = ?2 WHERE task_id = ?1")?
                    .execute(params![task_id, due_ms])?;
            }
            TaskWrite::Relay { task_id, status } => {
                conn.prepare_cached("UPDATE tasks SET relay = ?2 WHERE task_id = ?1")?
                    .execute(params![task_id, status.as_str()])?;
            }
            TaskWrite::OutboxPut { job, due_ms } => {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO outbox (id, task_id, team, url, body, attempts, due_ms, created_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    job.id,
                    job.task_id,
                    job.team,
                    job.url,
                    job.body,
                    job.attempts,
                    due_ms,
                    job.created_ms
                ])?;
            }
            TaskWrite::OutboxRetry {
                id,
                attempts,
                due_ms,
            } => {
                conn.prepare_cached("UPDATE outbox SET attempts = ?2, due_ms = ?3 WHERE id = ?1")?
                    .execute(params![id, attempts, due_ms])?;
            }
            TaskWrite::OutboxDone { id } => {
                conn.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                    .execute(params![id])?;
            }
        }
        Ok(())
    }

    pub fn task(&self, task_id: &str) -> rusqlite::Result<Option<TaskRecord>> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?1"
            ))?
            .query_row(params![task_id], task_of)
            .optional()
    }

    /// Credits the tasks created at or after `since` (as stamped) are charged now.
    pub fn charged_since(&self, since: &str) -> rusqlite::Result<u64> {
        let total: i64 = self.conn.query_row(
            "SELECT COALESCE(SUM(credits), 0) FROM tasks WHERE created_at >= ?1",
            params![since],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(total).unwrap_or(0))
    }

    /// A page of tasks, newest first (one more than `limit` is read to know whether there are more).
    pub fn tasks(&self, q: &TaskQuery) -> rusqlite::Result<Vec<TaskRecord>> {
        let mut conds: Vec<&str> = Vec::new();
        let mut values: Vec<String> = Vec::new();
        if let Some(u) = &q.user {
            conds.push("user = ?");
            values.push(u.clone());
        }
        if let Some(t) = &q.team {
            conds.push("team = ?");
            values.push(t.clone());
        }
        if let Some(s) = q.state {
            conds.push("state = ?");
            values.push(s.as_str().to_owned());
        }
        if let Some((at, id)) = &q.after {
            conds.push("(created_at, task_id) < (?, ?)");
            values.push(at.clone());
            values.push(id.clone());
        }
        let cond = where_clause(&conds);
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks{cond} ORDER BY created_at DESC, task_id DESC LIMIT {}",
            q.limit + 1
        );
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(&values), task_of)?;
        rows.collect()
    }

    /// Unfinished tasks, with their reservations (loaded when the store opens).
    pub fn live_tasks(&self) -> rusqlite::Result<Vec<LiveRow>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {TASK_COLUMNS_T}, r.id, r.day, r.month, t.due_ms, t.slot_ttl_ms FROM tasks t JOIN reservations r ON r.id = t.reservation \
             WHERE t.state NOT IN ('success', 'failed', 'cancelled')"
        ))?;
        let rows = st.query_map([], |r| {
            let task = task_of(r)?;
            Ok(LiveRow {
                row: r.get(15)?,
                record: RequestRecord {
                    request_id: task.request_id.clone(),
                    user: task.user.clone(),
                    team: task.team.clone(),
                    day: r.get(16)?,
                    month: r.get(17)?,
                    model: task.model.clone(),
                },
                due_ms: r.get(18)?,
                slot_ttl_ms: r
                    .get::<_, Option<i64>>(19)?
                    .and_then(|v| u64::try_from(v).ok()),
                task,
            })
        })?;
        rows.collect()
    }

    /// Reservations whose outcome is unknown (loaded when the store opens).
    pub fn unknown_reservations(&self) -> rusqlite::Result<Vec<UnknownRow>> {
        self.unsettled("status = 'unknown'")
    }

    /// Reservations not settled: open ones (in flight in a running gateway) and unknown ones, oldest first; the
    /// `open` flag tells them apart (the `reservations` command beside a running gateway, read-only).
    pub fn unsettled_reservations(&self) -> rusqlite::Result<Vec<UnknownRow>> {
        self.unsettled("status IN ('reserved', 'unknown')")
    }

    fn unsettled(&self, cond: &str) -> rusqlite::Result<Vec<UnknownRow>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT id, grant_id, request_id, user, team, day, month, model, off_peak, estimate, created_at, \
             status = 'reserved' FROM reservations WHERE {cond} ORDER BY id"
        ))?;
        let rows = st.query_map([], |r| {
            let grant: Option<String> = r.get(1)?;
            Ok(UnknownRow {
                row: r.get(0)?,
                grant: grant.and_then(|g| g.parse().ok()),
                record: RequestRecord {
                    request_id: r.get(2)?,
                    user: r.get(3)?,
                    team: r.get(4)?,
                    day: r.get(5)?,
                    month: r.get(6)?,
                    model: r.get(7)?,
                },
                off_peak: r.get(8)?,
                estimate: r.get::<_, i64>(9)?.max(0).unsigned_abs(),
                created_at: r.get(10)?,
                open: r.get(11)?,
            })
        })?;
        rows.collect()
    }

    /// The relay outbox (loaded when the store opens).
    pub fn outbox(&self) -> rusqlite::Result<Vec<(RelayJob, i64)>> {
        let mut st = self.conn.prepare(
            "SELECT id, task_id, team, url, body, attempts, due_ms, created_ms FROM outbox",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                RelayJob {
                    id: r.get(0)?,
                    task_id: r.get(1)?,
                    team: r.get(2)?,
                    url: r.get(3)?,
                    body: r.get(4)?,
                    attempts: r.get(5)?,
                    created_ms: r.get(7)?,
                },
                r.get(6)?,
            ))
        })?;
        rows.collect()
    }
}
