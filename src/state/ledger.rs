//! The SQLite ledger (`state.ledger_path`, WAL): every reservation with its settlement, task ownership, and
//! rejections by reason — so a restart forgets no spend, and `usage` reports who spent what.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rusqlite::{Connection, params};
use serde::Serialize;

use futures_util::future::{FutureExt, ready};

use super::ledger_idempotency::IdemWrite;
use super::ledger_tasks::TaskWrite;
use super::{
    Answer, BudgetKey, GrantId, Period, RejectionRecord, Reports, RequestRecord, Scope, StoreError,
    TaskRecord,
};

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS reservations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    user TEXT NOT NULL,
    team TEXT NOT NULL,
    day TEXT NOT NULL,
    month TEXT NOT NULL,
    model TEXT NOT NULL,
    off_peak INTEGER NOT NULL,
    estimate INTEGER NOT NULL,
    credits INTEGER,
    status TEXT NOT NULL CHECK (status IN ('reserved', 'settled', 'released', 'unknown')),
    task_id TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- The grant's id (a UUID), as the store handed it out; empty on rows older than the column.
    grant_id TEXT,
    -- Credits given back when the task failed or was cancelled (`credits` is then 0).
    refunded INTEGER NOT NULL DEFAULT 0
);
-- Monthly sums range over `day` (see `used`): one index per scope serves days and months, and every
-- admitted request updates three indexes fewer than with separate month indexes (dropped from older ledgers).
CREATE INDEX IF NOT EXISTS reservations_user_day ON reservations (user, day);
CREATE INDEX IF NOT EXISTS reservations_team_day ON reservations (team, day);
CREATE INDEX IF NOT EXISTS reservations_day ON reservations (day);
DROP INDEX IF EXISTS reservations_user_month;
DROP INDEX IF EXISTS reservations_team_month;
DROP INDEX IF EXISTS reservations_month;
-- Open reservations are few; this keeps the start-up reconciliation from scanning the whole ledger.
CREATE INDEX IF NOT EXISTS reservations_open ON reservations (id) WHERE status = 'reserved';
-- `credits` is what the task is charged now (see `ledger_tasks.rs` for the lifecycle columns, added to
-- older ledgers at open).
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    team TEXT NOT NULL,
    credits INTEGER NOT NULL,
    off_peak INTEGER NOT NULL,
    model TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
-- The sequence number of the last write applied, committed with it: a reader sees in one snapshot which
-- writes its sums include.
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('applied_seq', 0);
CREATE TABLE IF NOT EXISTS rejections (
    day TEXT NOT NULL,
    user TEXT NOT NULL,
    team TEXT NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (day, user, team, reason)
);
";

/// Creates the ledger file readable by its owner only (0600) when it does not exist yet; SQLite gives its WAL
/// and shared-memory files the database file's permissions. An existing file keeps the permissions ops gave it.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Takes the ledger's process lock (an advisory lock on the file, released when the process ends): the memory
/// backend keeps budgets in the memory of the one process that serves the ledger, so a second gateway — or the
/// `reservations` command changing what a running gateway holds — must not write it. The error says who to stop.
pub fn lock_for_this_process(path: &Path) -> anyhow::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow::anyhow!(
            "state.ledger_path = {} is in use by a running vidu-gateway: the memory backend is one process that \
             keeps budgets in memory — stop that process first (or resolve reservations through its admin API), and \
             use state.backend = \"redis\" to run several replicas",
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::anyhow!("cannot lock {}: {e}", path.display()))
        }
    }
}

/// Vidu answered a create with a task id the ledger already holds: the first owner keeps the task (a later
/// creator must not gain access to someone else's task); the collision is logged for ops.
pub(super) fn task_id_reused(task_id: &str, user: &str, team: &str) {
    tracing::error!(
        task_id,
        user,
        team,
        "the upstream returned a task id that belongs to an earlier task: its first owner keeps it"
    );
}

/// Credits a reservation counts for: its estimate while open or unknown, Vidu's figure once settled.
const USED: &str = "COALESCE(SUM(CASE WHEN status IN ('reserved', 'unknown') THEN estimate \
                    WHEN status = 'settled' THEN credits ELSE 0 END), 0)";

#[derive(Clone, Debug, Default)]
pub struct UsageFilter {
    pub user: Option<String>,
    pub team: Option<String>,
    /// Inclusive `YYYY-MM-DD` bounds.
    pub from: Option<String>,
    pub to: Option<String>,
}

/// One day of usage for the filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UsageRow {
    pub day: String,
    pub admitted: u64,
    pub rejected: u64,
    pub rejected_by_reason: std::collections::BTreeMap<String, u64>,
    pub credits_reserved: u64,
    pub credits_settled: u64,
    pub credits_released: u64,
    pub credits_unknown: u64,
    /// Credits given back for tasks that failed or were cancelled (settled counts what is still charged).
    pub credits_refunded: u64,
    pub off_peak_requests: u64,
}

pub struct Ledger {
    pub(super) conn: Connection,
}

/// How a reservation ends, when it ends in the batch that made it.
#[derive(Clone, Copy)]
struct Settled<'a> {
    status: &'a str,
    credits: Option<u64>,
    task: Option<&'a TaskRecord>,
}

/// One change to the ledger, applied by the writer thread in batches. `row` is the reservation's row id,
/// assigned by the memory backend (one process owns the file).
#[derive(Debug)]
pub enum Write {
    Reserve {
        row: i64,
        grant: GrantId,
        record: RequestRecord,
        off_peak: bool,
        estimate: u64,
    },
    Settle {
        row: i64,
        status: &'static str,
        credits: Option<u64>,
        /// The task Vidu created, with its owner (recorded unless its id already has one).
        task: Option<TaskRecord>,
    },
    Rejection(RejectionRecord),
    /// A task's lifecycle, the relay outbox (`ledger_tasks.rs`).
    Task(TaskWrite),
    /// A stored `Idempotency-Key` answer (`ledger_idempotency.rs`).
    Idempotency(IdemWrite),
    /// An audit entry (`ledger_audit.rs`).
    Audit(super::AuditEntry),
}

impl Ledger {
    /// Opens (creating it and its folder on first start) the ledger file. Reservations still open from a previous
    /// run (the process stopped mid-request) become `unknown`: the task may exist, so they stay counted.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        create_private(path)?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        add_grant_id_column(&conn)?;
        super::ledger_tasks::migrate(&conn)?;
        super::ledger_idempotency::migrate(&conn)?;
        super::ledger_audit::migrate(&conn)?;
        conn.execute(
            "UPDATE reservations SET status = 'unknown', updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE status = 'reserved'",
            [],
        )?;
        Ok(Self { conn })
    }

    /// The writer's connection: SQLite checkpoints the WAL itself only once it holds `pages` pages (the
    /// checkpointer thread normally keeps it far below that, at idle priority).
    pub fn set_autocheckpoint(&self, pages: u32) -> rusqlite::Result<()> {
        self.conn
            .query_row(&format!("PRAGMA wal_autocheckpoint = {pages}"), [], |_| {
                Ok(())
            })
    }

    /// A connection for `checkpoint` only.
    pub fn open_for_checkpoints(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self { conn })
    }

    /// Copies committed WAL pages into the database file without waiting for readers or the writer
    /// (`PASSIVE`), so that the WAL can start over. Returns the pages still to copy.
    pub fn checkpoint(&self) -> rusqlite::Result<i64> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                let (log, done): (i64, i64) = (r.get(1)?, r.get(2)?);
                Ok((log - done).max(0))
            })
    }

    /// Opens an existing ledger for reading only (the `usage` command beside a running gateway, and the
    /// gateway's own reader threads).
    pub fn open_read_only(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| anyhow::anyhow!("cannot open the ledger {}: {e}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self { conn })
    }

    /// A read that touches the database file.
    pub fn health(&self) -> rusqlite::Result<()> {
        self.conn
            .query_row("SELECT COUNT(*) FROM tasks WHERE 0", [], |_| Ok(()))
    }

    /// The highest reservation row id so far (row ids are assigned in memory, then written).
    pub fn max_id(&self) -> rusqlite::Result<i64> {
        self.conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM reservations", [], |r| {
                r.get(0)
            })
    }

    /// The sequence number of the last write applied.
    pub fn applied_seq(&self) -> rusqlite::Result<u64> {
        let v: i64 = self.conn.query_row(
            "SELECT COALESCE(MAX(value), 0) FROM meta WHERE key = 'applied_seq'",
            [],
            |r| r.get(0),
        )?;
        Ok(v.max(0).unsigned_abs())
    }

    /// Applies writes in one transaction (one commit for a whole batch), recording `through` as the last write
    /// applied. `now` stamps every row written (one clock read per batch). A reservation settled in the same
    /// batch as it was made is written once, already settled: the common case under load, and half the row
    /// writes.
    pub fn apply(&mut self, writes: &[Write], through: u64, now: &str) -> rusqlite::Result<()> {
        let reserved: HashSet<i64> = writes
            .iter()
            .filter_map(|w| match w {
                Write::Reserve { row, .. } => Some(*row),
                _ => None,
            })
            .collect();
        let settled_here: HashMap<i64, Settled<'_>> = writes
            .iter()
            .filter_map(|w| match w {
                Write::Settle {
                    row,
                    status,
                    credits,
                    task,
                } if reserved.contains(row) => Some((
                    *row,
                    Settled {
                        status,
                        credits: *credits,
                        task: task.as_ref(),
                    },
                )),
                _ => None,
            })
            .collect();
        let tx = self.conn.transaction()?;
        for w in writes {
            match w {
                Write::Reserve {
                    row,
                    grant,
                    record,
                    off_peak,
                    estimate,
                } => {
                    let settled = settled_here.get(row).copied().unwrap_or(Settled {
                        status: "reserved",
                        credits: None,
                        task: None,
                    });
                    let reservation = Reservation {
                        row: *row,
                        grant: *grant,
                        record,
                        off_peak: *off_peak,
                        estimate: *estimate,
                    };
                    Self::reserve(&tx, &reservation, settled, now)?;
                    if let Some(task) = settled.task {
                        Self::record_task(&tx, task, *row)?;
                    }
                }
                Write::Settle { row, .. } if settled_here.contains_key(row) => {}
                Write::Settle {
                    row,
                    status,
                    credits,
                    task,
                } => {
                    let task_id = task.as_ref().map(|t| t.task_id.as_str());
                    Self::settle(&tx, *row, status, *credits, task_id, now)?;
                    if let Some(task) = task {
                        Self::record_task(&tx, task, *row)?;
                    }
                }
                Write::Rejection(r) => Self::record_rejection(&tx, r)?,
                Write::Task(t) => Self::apply_task(&tx, t, now)?,
                Write::Idempotency(w) => Self::apply_idempotency(&tx, w)?,
                Write::Audit(e) => Self::apply_audit(&tx, e)?,
            }
        }
        tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'applied_seq'")?
            .execute(params![i64::try_from(through).unwrap_or(i64::MAX)])?;
        tx.commit()
    }

    fn reserve(
        conn: &Connection,
        r: &Reservation<'_>,
        s: Settled<'_>,
        now: &str,
    ) -> rusqlite::Result<()> {
        let e = r.record;
        conn.prepare_cached(
            "INSERT INTO reservations (id, request_id, user, team, day, month, model, off_peak, estimate, status, \
             credits, task_id, created_at, updated_at, grant_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13, ?14)",
        )?
        .execute(params![
            r.row,
            e.request_id,
            e.user,
            e.team,
            e.day,
            e.month,
            e.model,
            r.off_peak,
            r.estimate as i64,
            s.status,
            s.credits.map(|c| c as i64),
            s.task.map(|t| t.task_id.as_str()),
            now,
            r.grant.to_string()
        ])?;
        Ok(())
    }

    fn settle(
        conn: &Connection,
        row: i64,
        status: &str,
        credits: Option<u64>,
        task_id: Option<&str>,
        now: &str,
    ) -> rusqlite::Result<()> {
        conn.prepare_cached(
            "UPDATE reservations SET status = ?2, credits = ?3, task_id = ?4, updated_at = ?5 WHERE id = ?1",
        )?
        .execute(params![row, status, credits.map(|c| c as i64), task_id, now])?;
        Ok(())
    }

    fn record_rejection(conn: &Connection, r: &RejectionRecord) -> rusqlite::Result<()> {
        conn.prepare_cached(
            "INSERT INTO rejections (day, user, team, reason, count) VALUES (?1, ?2, ?3, ?4, 1) \
                 ON CONFLICT (day, user, team, reason) DO UPDATE SET count = count + 1",
        )?
        .execute(params![r.day, r.user, r.team, r.reason])?;
        Ok(())
    }

    /// Credits used in one budget, from the rows. A month is the range of its days, so the `(scope, day)`
    /// indexes serve both periods.
    pub fn used(&self, key: &BudgetKey) -> rusqlite::Result<u64> {
        let (first, last) = match key.period {
            Period::Day | Period::ImmediateDay => (key.period_key.clone(), key.period_key.clone()),
            Period::Month => (
                format!("{}-01", key.period_key),
                format!("{}-31", key.period_key),
            ),
        };
        let immediate = if key.period == Period::ImmediateDay {
            " AND off_peak = 0"
        } else {
            ""
        };
        let subject = match key.scope {
            Scope::User => "user = ?1",
            Scope::Team => "team = ?1",
            Scope::Global => "?1 = ?1",
        };
        let sql = format!(
            "SELECT {USED} FROM reservations WHERE {subject} AND day BETWEEN ?2 AND ?3{immediate}"
        );
        let v: i64 = self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![key.subject, first, last], |r| r.get(0))?;
        Ok(v.max(0) as u64)
    }

    /// `used`, with the sequence number of the last write the sum includes: both read in one snapshot.
    pub fn used_at(&self, key: &BudgetKey) -> rusqlite::Result<(u64, u64)> {
        let snapshot = self.conn.unchecked_transaction()?;
        let seq = self.applied_seq()?;
        let used = self.used(key)?;
        snapshot.finish()?;
        Ok((seq, used))
    }

    /// Usage per day for the filter.
    pub fn usage(&self, f: &UsageFilter) -> rusqlite::Result<Vec<UsageRow>> {
        let mut rows: std::collections::BTreeMap<String, UsageRow> = Default::default();
        let (cond, values) = usage_condition(f);
        let mut st = self.conn.prepare(&usage_sql(&cond))?;
        let mut q = st.query(rusqlite::params_from_iter(&values))?;
        while let Some(r) = q.next()? {
            let day: String = r.get(0)?;
            let n = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
            let row = rows.entry(day.clone()).or_default();
            row.day = day;
            row.admitted = n(1)?;
            row.credits_reserved = n(2)?;
            row.credits_settled = n(3)?;
            row.credits_released = n(4)?;
            row.credits_unknown = n(5)?;
            row.off_peak_requests = n(6)?;
            row.credits_refunded = n(7)?;
        }
        let mut st = self.conn.prepare(&format!(
            "SELECT day, reason, SUM(count) FROM rejections{cond} GROUP BY day, reason"
        ))?;
        let mut q = st.query(rusqlite::params_from_iter(&values))?;
        while let Some(r) = q.next()? {
            let day: String = r.get(0)?;
            let reason: String = r.get(1)?;
            let count = r.get::<_, i64>(2)?.max(0) as u64;
            let row = rows.entry(day.clone()).or_default();
            row.day = day;
            row.rejected += count;
            *row.rejected_by_reason.entry(reason).or_default() += count;
        }
        Ok(rows.into_values().collect())
    }
}

/// A reservation as written.
struct Reservation<'a> {
    row: i64,
    grant: GrantId,
    record: &'a RequestRecord,
    off_peak: bool,
    estimate: u64,
}

/// Ledgers written before reservations carried their grant's id get the column (empty on old rows).
fn add_grant_id_column(conn: &Connection) -> rusqlite::Result<()> {
    let has: bool = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('reservations') WHERE name = 'grant_id'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has {
        conn.execute_batch("ALTER TABLE reservations ADD COLUMN grant_id TEXT")?;
    }
    Ok(())
}

/// The `WHERE` clause of a usage query: only the filters given, so that SQLite can use the `(user, day)` and
/// `(team, day)` indexes (a `?1 IS NULL OR user = ?1` condition cannot use any index).
fn usage_condition(f: &UsageFilter) -> (String, Vec<&str>) {
    let mut conds = Vec::new();
    let mut values = Vec::new();
    for (cond, value) in [
        ("user = ?", &f.user),
        ("team = ?", &f.team),
        ("day >= ?", &f.from),
        ("day <= ?", &f.to),
    ] {
        if let Some(v) = value {
            conds.push(cond);
            values.push(v.as_str());
        }
    }
    (where_clause(&conds), values)
}

/// ` WHERE a AND b …` of the conditions given, or nothing: a query names only the filters it has, so that SQLite
/// can use the indexes that match them.
pub(super) fn where_clause(conds: &[&str]) -> String {
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

fn usage_sql(cond: &str) -> String {
    format!(
        "SELECT day, COUNT(*), \
         COALESCE(SUM(CASE WHEN status = 'reserved' THEN estimate ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN status = 'settled' THEN credits ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN status = 'released' THEN estimate ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN status = 'unknown' THEN estimate ELSE 0 END), 0), \
         COALESCE(SUM(off_peak), 0), \
         COALESCE(SUM(refunded), 0) \
         FROM reservations{cond} GROUP BY day"
    )
}

/// A ledger file read directly (the `usage` command): every answer is ready at once.
impl Reports for Ledger {
    fn used<'a>(&'a self, keys: &'a [BudgetKey]) -> Answer<'a, Vec<u64>> {
        let used: Result<Vec<u64>, StoreError> = keys
            .iter()
            .map(|k| Ledger::used(self, k).map_err(StoreError::from))
            .collect();
        ready(used).boxed()
    }

    fn usage<'a>(&'a self, filter: &'a UsageFilter) -> Answer<'a, Vec<UsageRow>> {
        ready(Ledger::usage(self, filter).map_err(StoreError::from)).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(user: &str, day: &str) -> RequestRecord {
        RequestRecord {
            request_id: format!("req-{user}-{day}"),
            user: user.into(),
            team: "t".into(),
            day: day.into(),
            month: day[..7].into(),
            model: "viduq2".into(),
        }
    }

    fn reserve(row: i64, user: &str, day: &str, estimate: u64) -> Write {
        Write::Reserve {
            row,
            grant: GrantId::random(),
            record: record(user, day),
            off_peak: false,
            estimate,
        }
    }

    /// Vidu created `task` for `user`'s reservation `row`, charging `credits`.
    fn charged(row: i64, user: &str, credits: u64, task: &str) -> Write {
        Write::Settle {
            row,
            status: "settled",
            credits: Some(credits),
            task: Some(TaskRecord {
                task_id: task.into(),
                request_id: String::new(),
                user: user.into(),
                team: "t".into(),
                model: "viduq2".into(),
                off_peak: false,
                estimate: credits,
                charged: credits,
                refunded: 0,
                state: crate::state::TaskState::Created,
                callback_url: None,
                created_at: String::new(),
                updated_at: String::new(),
                ended_at: None,
                relay: None,
            }),
        }
    }

    type Row = (i64, String, Option<i64>, Option<String>, String, String);

    fn rows(l: &Ledger) -> Vec<Row> {
        let mut st = l
            .conn
            .prepare("SELECT id, status, credits, task_id, created_at, updated_at FROM reservations ORDER BY id")
            .unwrap();
        st.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// The ledger and its WAL are readable by their owner only: they name every user and what they spent.
    #[test]
    fn a_new_ledger_and_its_wal_are_private_to_the_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite3");
        let mut l = Ledger::open(&path).unwrap();
        l.apply(
            &[reserve(1, "u", "2026-11-25", 10)],
            0,
            "2026-11-25T10:00:00.000Z",
        )
        .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        let wal = dir.path().join("ledger.sqlite3-wal");
        assert!(wal.exists());
        assert_eq!(mode(&wal), 0o600);
    }

    /// A task id Vidu hands out a second time stays with its first owner, whether the second create settles in
    /// the batch that reserved it or in a later one.
    #[test]
    fn a_reused_task_id_keeps_its_first_owner() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(&dir.path().join("l.sqlite3")).unwrap();
        let now = "2026-11-25T10:00:00.000Z";
        l.apply(
            &[
                reserve(1, "first", "2026-11-25", 10),
                charged(1, "first", 10, "task-1"),
            ],
            0,
            now,
        )
        .unwrap();
        l.apply(
            &[
                reserve(2, "second", "2026-11-25", 10),
                charged(2, "second", 10, "task-1"),
            ],
            0,
            now,
        )
        .unwrap();
        l.apply(&[reserve(3, "third", "2026-11-25", 10)], 0, now)
            .unwrap();
        l.apply(&[charged(3, "third", 10, "task-1")], 0, now)
            .unwrap();
        assert_eq!(l.task("task-1").unwrap().unwrap().user, "first");
    }

    /// Reserved then settled in one batch, or across two: the same rows and the same task ownership.
    #[test]
    fn a_reservation_settled_in_its_own_batch_is_written_once_with_the_same_result() {
        let dir = tempfile::tempdir().unwrap();
        let mut one = Ledger::open(&dir.path().join("one.sqlite3")).unwrap();
        let mut two = Ledger::open(&dir.path().join("two.sqlite3")).unwrap();
        let released = Write::Settle {
            row: 2,
            status: "released",
            credits: None,
            task: None,
        };
        let released_again = Write::Settle {
            row: 2,
            status: "released",
            credits: None,
            task: None,
        };
        let now = "2026-11-25T10:00:00.000Z";
        let (one_before, two_before) = (one.conn.total_changes(), two.conn.total_changes());
        one.apply(
            &[
                reserve(1, "ana", "2026-11-25", 40),
                reserve(2, "bo", "2026-11-25", 20),
                charged(1, "ana", 35, "task-1"),
                released,
                reserve(3, "cy", "2026-11-25", 10),
            ],
            0,
            now,
        )
        .unwrap();
        two.apply(
            &[
                reserve(1, "ana", "2026-11-25", 40),
                reserve(2, "bo", "2026-11-25", 20),
                reserve(3, "cy", "2026-11-25", 10),
            ],
            0,
            now,
        )
        .unwrap();
        two.apply(&[charged(1, "ana", 35, "task-1"), released_again], 0, now)
            .unwrap();
        assert_eq!(rows(&one), rows(&two));
        // In one batch: three reservation rows, one task row and the batch's sequence number. Across two: two
        // more row updates and the second batch's sequence number.
        assert_eq!(one.conn.total_changes() - one_before, 5);
        assert_eq!(two.conn.total_changes() - two_before, 8);
        let r = rows(&one);
        assert_eq!(r[0].1, "settled");
        assert_eq!((r[0].2, r[0].3.as_deref()), (Some(35), Some("task-1")));
        assert_eq!(r[1].1, "released");
        assert_eq!(r[2].1, "reserved");
        assert_eq!(r[0].4, now);
        for l in [&one, &two] {
            let t = l.task("task-1").unwrap().unwrap();
            assert_eq!(
                (t.user.as_str(), t.team.as_str(), t.charged),
                ("ana", "t", 35)
            );
            assert_eq!(t.model, "viduq2");
        }
    }

    /// Months are summed over their days; the month indexes of older ledgers are dropped on open.
    #[test]
    fn month_budgets_sum_their_days_and_old_month_indexes_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite3");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute_batch("CREATE INDEX reservations_month ON reservations (month);")
                .unwrap();
        }
        let mut l = Ledger::open(&path).unwrap();
        let indexes: Vec<String> = l
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE '%month%'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(indexes.is_empty(), "{indexes:?}");
        l.apply(
            &[
                reserve(1, "ana", "2026-10-31", 1),
                reserve(2, "ana", "2026-11-01", 10),
                reserve(3, "ana", "2026-11-30", 100),
                reserve(4, "bo", "2026-11-15", 1000),
                reserve(5, "ana", "2026-12-01", 10000),
            ],
            0,
            "2026-11-25T10:00:00.000Z",
        )
        .unwrap();
        let key = |scope, subject: &str, period, period_key: &str| BudgetKey {
            scope,
            subject: subject.into(),
            period,
            period_key: period_key.into(),
        };
        for (scope, subject, period, period_key, used) in [
            (Scope::User, "ana", Period::Month, "2026-11", 110),
            (Scope::User, "ana", Period::Day, "2026-11-30", 100),
            (Scope::Team, "t", Period::Month, "2026-11", 1110),
            (Scope::Global, "", Period::Month, "2026-12", 10000),
        ] {
            let k = key(scope, subject, period, period_key);
            assert_eq!(l.used(&k).unwrap(), used, "{k:?}");
        }
    }

    /// A usage query names only the filters it has, so SQLite reads one user's or team's rows through its
    /// `(scope, day)` index instead of scanning the ledger.
    #[test]
    fn usage_queries_use_the_scope_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("l.sqlite3")).unwrap();
        let plan = |f: UsageFilter| -> String {
            let (cond, values) = usage_condition(&f);
            let mut st = l
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {}", usage_sql(&cond)))
                .unwrap();
            st.query_map(rusqlite::params_from_iter(&values), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .join("; ")
        };
        let user = plan(UsageFilter {
            user: Some("ana".into()),
            ..Default::default()
        });
        assert!(user.contains("reservations_user_day"), "{user}");
        let team = plan(UsageFilter {
            team: Some("t".into()),
            from: Some("2026-11-01".into()),
            ..Default::default()
        });
        assert!(team.contains("reservations_team_day"), "{team}");
    }
}
