//! Stored `Idempotency-Key` answers in the SQLite ledger (memory backend), so a restart does not forget an answer a
//! retry may still ask for. Claims in flight are not written: they live for one request, in one process.

use rusqlite::{Connection, params};

use super::ledger::Ledger;
use super::{IdemClaim, StoredAnswer};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS idempotency (
    -- IdemKey::digest(): hex SHA-256 of user, NUL, key.
    scope TEXT PRIMARY KEY,
    body_hash TEXT NOT NULL,
    status INTEGER NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_expires ON idempotency (expires_ms);
";

/// Brings a ledger's idempotency table to this version.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)
}

/// One change to the stored answers, applied by the writer thread with the batch it is in.
#[derive(Debug)]
pub enum IdemWrite {
    Put {
        scope: String,
        body_hash: String,
        answer: StoredAnswer,
        expires_ms: i64,
    },
    /// Answers that expired before this time (ms) go.
    Prune { before_ms: i64 },
}

impl IdemWrite {
    pub fn put(claim: &IdemClaim, answer: &StoredAnswer, expires_ms: i64) -> Self {
        IdemWrite::Put {
            scope: claim.key.digest(),
            body_hash: claim.hash_hex(),
            answer: answer.clone(),
            expires_ms,
        }
    }
}

/// A stored answer as loaded when the store opens.
pub struct IdemRow {
    pub scope: String,
    pub body_hash: String,
    pub answer: StoredAnswer,
    pub expires_ms: i64,
}

impl Ledger {
    pub(super) fn apply_idempotency(conn: &Connection, w: &IdemWrite) -> rusqlite::Result<()> {
        match w {
            IdemWrite::Put {
                scope,
                body_hash,
                answer,
                expires_ms,
            } => {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO idempotency (scope, body_hash, status, headers, body, expires_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    scope,
                    body_hash,
                    answer.status,
                    answer.headers_json(),
                    answer.body.as_ref(),
                    expires_ms
                ])?;
            }
            IdemWrite::Prune { before_ms } => {
                conn.prepare_cached("DELETE FROM idempotency WHERE expires_ms <= ?1")?
                    .execute(params![before_ms])?;
            }
        }
        Ok(())
    }

    /// The stored answers still valid at `now_ms` (loaded when the store opens).
    pub fn idempotency_answers(&self, now_ms: i64) -> rusqlite::Result<Vec<IdemRow>> {
        let mut st = self.conn.prepare(
            "SELECT scope, body_hash, status, headers, body, expires_ms FROM idempotency WHERE expires_ms > ?1",
        )?;
        let rows = st.query_map(params![now_ms], |r| {
            let headers: String = r.get(3)?;
            let body: Vec<u8> = r.get(4)?;
            Ok(IdemRow {
                scope: r.get(0)?,
                body_hash: r.get(1)?,
                answer: StoredAnswer {
                    status: r.get(2)?,
                    headers: StoredAnswer::headers_from_json(&headers),
                    body: body.into(),
                },
                expires_ms: r.get(5)?,
            })
        })?;
        rows.collect()
    }
}
