//! The SQLite ledger (`state.ledger_path`, WAL): every reservation with its settlement, task ownership, and
//! rejections by reason — so a restart forgets no spend, and `usage` reports who spent what.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{BudgetKey, LedgerEntry, Period, Scope};

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
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS reservations_user_day ON reservations (user, day);
CREATE INDEX IF NOT EXISTS reservations_user_month ON reservations (user, month);
CREATE INDEX IF NOT EXISTS reservations_team_day ON reservations (team, day);
CREATE INDEX IF NOT EXISTS reservations_team_month ON reservations (team, month);
CREATE INDEX IF NOT EXISTS reservations_day ON reservations (day);
CREATE INDEX IF NOT EXISTS reservations_month ON reservations (month);
-- Open reservations are few; this keeps the start-up reconciliation from scanning the whole ledger.
CREATE INDEX IF NOT EXISTS reservations_open ON reservations (id) WHERE status = 'reserved';
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    team TEXT NOT NULL,
    credits INTEGER NOT NULL,
    off_peak INTEGER NOT NULL,
    model TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS rejections (
    day TEXT NOT NULL,
    user TEXT NOT NULL,
    team TEXT NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (day, user, team, reason)
);
";

/// Credits a reservation counts for: its estimate while open or unknown, Vidu's figure once settled.
const USED: &str = "COALESCE(SUM(CASE WHEN status IN ('reserved', 'unknown') THEN estimate \
                    WHEN status = 'settled' THEN credits ELSE 0 END), 0)";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskRecord {
    pub task_id: String,
    pub user: String,
    pub team: String,
    pub credits: u64,
    pub off_peak: bool,
    pub model: String,
    pub created_at: String,
}

#[derive(Clone, Debug, Default)]
pub struct UsageFilter {
    pub user: Option<String>,
    pub team: Option<String>,
    /// Inclusive `YYYY-MM-DD` bounds.
    pub from: Option<String>,
    pub to: Option<String>,
}

/// One day of usage for the filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub day: String,
    pub admitted: u64,
    pub rejected: u64,
    pub rejected_by_reason: std::collections::BTreeMap<String, u64>,
    pub credits_reserved: u64,
    pub credits_settled: u64,
    pub credits_released: u64,
    pub credits_unknown: u64,
    pub off_peak_requests: u64,
}

pub struct Ledger {
    conn: Connection,
}

/// One change to the ledger, applied by the writer thread in batches.
#[derive(Debug)]
pub enum Write {
    Reserve {
        id: i64,
        entry: LedgerEntry,
        estimate: u64,
    },
    Settle {
        id: i64,
        status: &'static str,
        credits: Option<u64>,
        task_id: Option<String>,
    },
    Rejection {
        entry: LedgerEntry,
        reason: String,
    },
}

impl Ledger {
    /// Opens (creating it and its folder on first start) the ledger file. Reservations still open from a previous
    /// run (the process stopped mid-request) become `unknown`: the task may exist, so they stay counted.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute(
            "UPDATE reservations SET status = 'unknown', updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE status = 'reserved'",
            [],
        )?;
        Ok(Self { conn })
    }

    /// Opens an existing ledger for reading only (the `usage` command, beside a running gateway).
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

    /// The highest reservation id so far (ids are assigned in memory, then written).
    pub fn max_id(&self) -> rusqlite::Result<i64> {
        self.conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM reservations", [], |r| {
                r.get(0)
            })
    }

    /// Applies writes in one transaction (one commit for a whole batch).
    pub fn apply(&mut self, writes: &[Write]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        for w in writes {
            match w {
                Write::Reserve {
                    id,
                    entry,
                    estimate,
                } => Self::reserve(&tx, *id, entry, *estimate)?,
                Write::Settle {
                    id,
                    status,
                    credits,
                    task_id,
                } => {
                    Self::settle(&tx, *id, status, *credits, task_id.as_deref())?;
                    if let (Some(task), Some(c)) = (task_id, credits) {
                        Self::record_task(&tx, *id, task, *c)?;
                    }
                }
                Write::Rejection { entry, reason } => Self::record_rejection(&tx, entry, reason)?,
            }
        }
        tx.commit()
    }

    fn reserve(conn: &Connection, id: i64, e: &LedgerEntry, estimate: u64) -> rusqlite::Result<()> {
        conn.prepare_cached(
            "INSERT INTO reservations (id, request_id, user, team, day, month, model, off_peak, estimate, status) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'reserved')",
        )?
        .execute(params![id, e.request_id, e.user, e.team, e.day, e.month, e.model, e.off_peak, estimate as i64])?;
        Ok(())
    }

    fn settle(
        conn: &Connection,
        id: i64,
        status: &str,
        credits: Option<u64>,
        task_id: Option<&str>,
    ) -> rusqlite::Result<()> {
        conn.prepare_cached(
            "UPDATE reservations SET status = ?2, credits = ?3, task_id = ?4, \
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
        )?
        .execute(params![id, status, credits.map(|c| c as i64), task_id])?;
        Ok(())
    }

    /// Records task ownership from the reservation it settled.
    fn record_task(
        conn: &Connection,
        reservation: i64,
        task_id: &str,
        credits: u64,
    ) -> rusqlite::Result<()> {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO tasks (task_id, user, team, credits, off_peak, model) \
                 SELECT ?2, user, team, ?3, off_peak, model FROM reservations WHERE id = ?1",
        )?
        .execute(params![reservation, task_id, credits as i64])?;
        Ok(())
    }

    pub fn task(&self, task_id: &str) -> rusqlite::Result<Option<TaskRecord>> {
        self.conn
            .prepare_cached(
                "SELECT task_id, user, team, credits, off_peak, model, created_at FROM tasks WHERE task_id = ?1",
            )?
            .query_row(params![task_id], |r| {
                Ok(TaskRecord {
                    task_id: r.get(0)?,
                    user: r.get(1)?,
                    team: r.get(2)?,
                    credits: r.get::<_, i64>(3)?.max(0) as u64,
                    off_peak: r.get(4)?,
                    model: r.get(5)?,
                    created_at: r.get(6)?,
                })
            })
            .optional()
    }

    fn record_rejection(conn: &Connection, e: &LedgerEntry, reason: &str) -> rusqlite::Result<()> {
        conn.prepare_cached(
            "INSERT INTO rejections (day, user, team, reason, count) VALUES (?1, ?2, ?3, ?4, 1) \
                 ON CONFLICT (day, user, team, reason) DO UPDATE SET count = count + 1",
        )?
        .execute(params![e.day, e.user, e.team, reason])?;
        Ok(())
    }

    /// Credits used in one budget, from the rows.
    pub fn used(&self, key: &BudgetKey) -> rusqlite::Result<u64> {
        let period_col = match key.period {
            Period::Day | Period::ImmediateDay => "day",
            Period::Month => "month",
        };
        let immediate = if key.period == Period::ImmediateDay {
            " AND off_peak = 0"
        } else {
            ""
        };
        let sql = match key.scope {
            Scope::User => format!(
                "SELECT {USED} FROM reservations WHERE user = ?1 AND {period_col} = ?2{immediate}"
            ),
            Scope::Team => format!(
                "SELECT {USED} FROM reservations WHERE team = ?1 AND {period_col} = ?2{immediate}"
            ),
            Scope::Global => {
                format!(
                    "SELECT {USED} FROM reservations WHERE ?1 = ?1 AND {period_col} = ?2{immediate}"
                )
            }
        };
        let v: i64 = self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![key.subject, key.period_key], |r| r.get(0))?;
        Ok(v.max(0) as u64)
    }

    /// Usage per day for the filter.
    pub fn usage(&self, f: &UsageFilter) -> rusqlite::Result<Vec<UsageRow>> {
        let mut rows: std::collections::BTreeMap<String, UsageRow> = Default::default();
        let cond = "(?1 IS NULL OR user = ?1) AND (?2 IS NULL OR team = ?2) \
                    AND (?3 IS NULL OR day >= ?3) AND (?4 IS NULL OR day <= ?4)";
        let mut st = self.conn.prepare(&format!(
            "SELECT day, COUNT(*), \
             COALESCE(SUM(CASE WHEN status = 'reserved' THEN estimate ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN status = 'settled' THEN credits ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN status = 'released' THEN estimate ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN status = 'unknown' THEN estimate ELSE 0 END), 0), \
             COALESCE(SUM(off_peak), 0) \
             FROM reservations WHERE {cond} GROUP BY day"
        ))?;
        let mut q = st.query(params![f.user, f.team, f.from, f.to])?;
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
        }
        let mut st = self.conn.prepare(&format!(
            "SELECT day, reason, SUM(count) FROM rejections WHERE {cond} GROUP BY day, reason"
        ))?;
        let mut q = st.query(params![f.user, f.team, f.from, f.to])?;
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
