//! The `fail_open` spool: what a replica admitted while the state backend could not be reached, and how each of
//! those requests ended, kept in a local SQLite file (`state.spool_path`) until it is written back.
//!
//! Writes go through one thread, in order (an admission before its end), so a request never waits on SQLite.
//! Entries a previous process left unfinished (it stopped mid-request) end as `unknown`: the task may exist, so
//! the estimate stays counted. [`FailOpen`](super::fail_open::FailOpen) writes ended entries back with
//! `Admissions::record_unaccounted` (at most once per id) and removes them once the backend has them.
//!
//! It also keeps settlements of grants the backend did make but could not settle when the request ended (Redis
//! unreachable just then): those are written back with `Admissions::finish` (at most once per grant), so the
//! reservation settles to Vidu's figure and the task gets its owner.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use prometheus_client::metrics::gauge::Gauge;

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use super::{GrantId, RequestRecord, Run, Settlement, Unaccounted};

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS spool (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    off_peak INTEGER NOT NULL,
    estimate INTEGER NOT NULL,
    ended TEXT,
    admitted_at TEXT NOT NULL,
    settle_only INTEGER NOT NULL DEFAULT 0
);
";

/// The parts of a request the spool keeps (the request's own id, who, when, which model).
#[derive(Serialize, Deserialize)]
struct Record {
    request_id: String,
    user: String,
    team: String,
    day: String,
    month: String,
    model: String,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Ended {
    Charged {
        credits: u64,
        task_id: Option<String>,
        /// The task's state in the create answer (absent in spools written before it was kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        callback_url: Option<String>,
    },
    Released,
    Unknown,
}

enum Op {
    Admitted {
        id: GrantId,
        record: Record,
        run: Run,
        at: String,
    },
    Ended {
        id: GrantId,
        ended: Ended,
    },
    Unsettled {
        id: GrantId,
        ended: Ended,
    },
}

/// What the spool holds for the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spooled {
    /// Admitted without the backend, and how it ended.
    Admission(Unaccounted),
    /// Admitted by the backend, ended while it could not be reached.
    Settlement { id: GrantId, settlement: Settlement },
}

impl Spooled {
    pub fn id(&self) -> GrantId {
        match self {
            Spooled::Admission(u) => u.id,
            Spooled::Settlement { id, .. } => *id,
        }
    }
}

fn ended_of(settlement: Settlement) -> Ended {
    match settlement {
        Settlement::Charged { credits, task } => {
            let (task_id, state, callback_url) = match task {
                Some(t) => (
                    Some(t.task_id),
                    Some(t.state.as_str().to_owned()),
                    t.callback_url,
                ),
                None => (None, None, None),
            };
            Ended::Charged {
                credits,
                task_id,
                state,
                callback_url,
            }
        }
        Settlement::Released => Ended::Released,
        Settlement::Unknown => Ended::Unknown,
    }
}

fn settlement_of(ended: Ended) -> Settlement {
    match ended {
        Ended::Charged {
            credits,
            task_id,
            state,
            callback_url,
        } => Settlement::Charged {
            credits,
            task: task_id.map(|task_id| super::lifecycle::Created {
                task_id,
                state: state
                    .as_deref()
                    .and_then(super::lifecycle::TaskState::parse)
                    .unwrap_or(super::lifecycle::TaskState::Created),
                callback_url,
            }),
        },
        Ended::Released => Settlement::Released,
        Ended::Unknown => Settlement::Unknown,
    }
}

pub struct Spool {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    ops: mpsc::Sender<Op>,
    /// Entries not yet written back (admitted, ended or not): the `state_spool_depth` gauge itself.
    depth: Gauge,
}

impl Spool {
    /// Opens (creating it and its folder) the spool file; starts its writer thread. `depth` counts the entries
    /// waiting (the `state_spool_depth` gauge).
    pub fn open(path: &Path, depth: Gauge) -> anyhow::Result<Self> {
        let context =
            |e: rusqlite::Error| anyhow::anyhow!("state.spool_path = {}: {e}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("state.spool_path = {}: {e}", path.display()))?;
        }
        let conn = Connection::open(path).map_err(context)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(context)?;
        conn.execute_batch(SCHEMA).map_err(context)?;
        let unknown = serde_json::to_string(&Ended::Unknown).unwrap_or_default();
        conn.execute(
            "UPDATE spool SET ended = ?1 WHERE ended IS NULL",
            [&unknown],
        )
        .map_err(context)?;
        let waiting: i64 = conn
            .query_row("SELECT COUNT(*) FROM spool", [], |r| r.get(0))
            .map_err(context)?;
        depth.set(waiting);
        let conn = Arc::new(Mutex::new(conn));
        let (tx, rx) = mpsc::channel::<Op>();
        let writer = conn.clone();
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                for op in rx {
                    let conn = writer.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = apply(&conn, op) {
                        tracing::error!(spool = %shown, error = %e, "the fail_open spool could not be written");
                    }
                }
            })
            .map_err(|e| anyhow::anyhow!("cannot start the spool writer: {e}"))?;
        Ok(Self {
            path: path.to_owned(),
            conn,
            ops: tx,
            depth,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries not yet written back.
    pub fn depth(&self) -> u64 {
        u64::try_from(self.depth.get()).unwrap_or(0)
    }

    fn send(&self, op: Op) {
        if self.ops.send(op).is_err() {
            tracing::error!(spool = %self.path.display(), "the spool writer has stopped: an admission is not spooled");
        }
    }

    /// A request admitted without the backend.
    pub fn admitted(&self, id: GrantId, record: &RequestRecord, run: Run) {
        self.depth.inc();
        self.send(Op::Admitted {
            id,
            record: Record {
                request_id: record.request_id.clone(),
                user: record.user.clone(),
                team: record.team.clone(),
                day: record.day.clone(),
                month: record.month.clone(),
                model: record.model.clone(),
            },
            run,
            at: crate::clock::stamp(jiff::Timestamp::now()),
        });
    }

    /// How a spooled request ended.
    pub fn ended(&self, id: GrantId, settlement: Settlement) {
        self.send(Op::Ended {
            id,
            ended: ended_of(settlement),
        });
    }

    /// A settlement of a grant the backend holds, which it could not take when the request ended.
    pub fn unsettled(&self, id: GrantId, settlement: Settlement) {
        self.depth.inc();
        self.send(Op::Unsettled {
            id,
            ended: ended_of(settlement),
        });
    }

    /// Up to `limit` ended entries, oldest first (blocking: call off the workers).
    pub fn ended_entries(&self, limit: u32) -> anyhow::Result<Vec<Spooled>> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn.prepare_cached(
            "SELECT id, record, off_peak, estimate, ended, admitted_at, settle_only FROM spool \
             WHERE ended IS NOT NULL ORDER BY rowid LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, bool>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, record, off_peak, estimate, ended, at, settle_only) = row?;
            let ended: Ended = serde_json::from_str(&ended)?;
            if settle_only {
                out.push(Spooled::Settlement {
                    id: id.parse()?,
                    settlement: settlement_of(ended),
                });
                continue;
            }
            let record: Record = serde_json::from_str(&record)?;
            out.push(Spooled::Admission(Unaccounted {
                id: id.parse()?,
                record: RequestRecord {
                    request_id: record.request_id,
                    user: record.user,
                    team: record.team,
                    day: record.day,
                    month: record.month,
                    model: record.model,
                },
                run: Run {
                    off_peak,
                    estimate: u64::try_from(estimate).unwrap_or(0),
                },
                settlement: settlement_of(ended),
                admitted_at: at,
            }));
        }
        Ok(out)
    }

    /// Forgets an entry the backend now holds (blocking).
    pub fn remove(&self, id: GrantId) -> anyhow::Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let removed = conn.execute("DELETE FROM spool WHERE id = ?1", [id.to_string()])?;
        if removed > 0 {
            self.depth.dec();
        }
        Ok(())
    }
}

fn apply(conn: &Connection, op: Op) -> anyhow::Result<()> {
    match op {
        Op::Admitted {
            id,
            record,
            run,
            at,
        } => {
            conn.execute(
                "INSERT OR IGNORE INTO spool (id, record, off_peak, estimate, ended, admitted_at) \
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
                params![
                    id.to_string(),
                    serde_json::to_string(&record)?,
                    run.off_peak,
                    i64::try_from(run.estimate).unwrap_or(i64::MAX),
                    at
                ],
            )?;
        }
        Op::Ended { id, ended } => {
            conn.execute(
                "UPDATE spool SET ended = ?2 WHERE id = ?1 AND ended IS NULL",
                params![id.to_string(), serde_json::to_string(&ended)?],
            )?;
        }
        Op::Unsettled { id, ended } => {
            conn.execute(
                "INSERT OR IGNORE INTO spool (id, record, off_peak, estimate, ended, admitted_at, settle_only) \
                 VALUES (?1, '{}', 0, 0, ?2, '', 1)",
                params![id.to_string(), serde_json::to_string(&ended)?],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RequestRecord {
        RequestRecord {
            request_id: "r1".into(),
            user: "alice".into(),
            team: "mkt".into(),
            day: "2026-12-03".into(),
            month: "2026-12".into(),
            model: "viduq2".into(),
        }
    }

    fn wait_for(spool: &Spool, n: usize) -> Vec<Spooled> {
        for _ in 0..200 {
            let entries = spool.ended_entries(100).unwrap();
            if entries.len() == n {
                return entries;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        spool.ended_entries(100).unwrap()
    }

    #[test]
    fn an_ended_admission_is_kept_until_removed_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.sqlite3");
        let spool = Spool::open(&path, Gauge::default()).unwrap();
        let (a, b) = (GrantId::random(), GrantId::random());
        let run = Run {
            off_peak: false,
            estimate: 55,
        };
        spool.admitted(a, &record(), run);
        spool.admitted(b, &record(), run);
        spool.ended(a, Settlement::charged(50, Some("t1")));
        let c = GrantId::random();
        spool.unsettled(c, Settlement::Released);
        let entries = wait_for(&spool, 2);
        let Spooled::Admission(first) = &entries[0] else {
            panic!("{entries:?}")
        };
        assert_eq!(first.id, a);
        assert_eq!(first.settlement, Settlement::charged(50, Some("t1")));
        assert_eq!(
            entries[1],
            Spooled::Settlement {
                id: c,
                settlement: Settlement::Released
            }
        );
        assert_eq!(spool.depth(), 3);
        spool.remove(a).unwrap();
        spool.remove(c).unwrap();
        assert_eq!(spool.depth(), 1);
        drop(spool);

        // `b` was in flight when the process stopped: it ends as unknown (its estimate stays counted).
        let spool = Spool::open(&path, Gauge::default()).unwrap();
        assert_eq!(spool.depth(), 1);
        let entries = spool.ended_entries(100).unwrap();
        assert_eq!(entries.len(), 1);
        let Spooled::Admission(left) = &entries[0] else {
            panic!("{entries:?}")
        };
        assert_eq!(left.id, b);
        assert_eq!(left.settlement, Settlement::Unknown);
        assert_eq!(left.run, run);
        assert_eq!(left.record, record());
    }
}
