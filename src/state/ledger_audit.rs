//! The audit trail in the SQLite ledger (memory backend): one row per entry, listed newest first.

use rusqlite::{Connection, params};

use super::ledger::{Ledger, where_clause};
use super::{AuditEntry, AuditPage, AuditQuery, page_of};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    id TEXT PRIMARY KEY,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at, id);
";

/// Brings a ledger's audit table to this version.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)
}

impl Ledger {
    pub(super) fn apply_audit(conn: &Connection, e: &AuditEntry) -> rusqlite::Result<()> {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO audit (id, at, kind, actor, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            e.id,
            e.at,
            e.kind,
            e.actor,
            e.outcome,
            e.detail.to_string()
        ])?;
        Ok(())
    }

    /// A page of entries, newest first (one more than `limit` is read to know whether there are more).
    pub fn audit_entries(&self, q: &AuditQuery) -> rusqlite::Result<AuditPage> {
        let mut conds: Vec<&str> = Vec::new();
        let mut values: Vec<String> = Vec::new();
        if let Some(k) = &q.kind {
            conds.push("kind = ?");
            values.push(k.clone());
        }
        if let Some(s) = &q.since {
            conds.push("at >= ?");
            values.push(s.clone());
        }
        if let Some(u) = &q.until {
            conds.push("at < ?");
            values.push(u.clone());
        }
        if let Some((at, id)) = &q.before {
            conds.push("(at, id) < (?, ?)");
            values.push(at.clone());
            values.push(id.clone());
        }
        let cond = where_clause(&conds);
        let sql = format!(
            "SELECT id, at, kind, actor, outcome, detail FROM audit{cond} ORDER BY at DESC, id DESC LIMIT {}",
            q.limit + 1
        );
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(&values), |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                at: r.get(1)?,
                kind: r.get(2)?,
                actor: r.get(3)?,
                outcome: r.get(4)?,
                detail: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
            })
        })?;
        let (entries, next) = page_of(rows.collect::<rusqlite::Result<Vec<_>>>()?, q.limit, |e| {
            (e.at.clone(), e.id.clone())
        });
        Ok(AuditPage { entries, next })
    }
}
