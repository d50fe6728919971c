//! The ledger writer: one thread that owns the write connection and commits whatever has queued up as one
//! transaction, so SQLite's per-commit cost (WAL write, file locks) is paid per batch, not per request. Every
//! write gets a sequence number when it is queued; each commit records the last one it applied, and a read that
//! must see the writes queued before it waits (off the request path) until they are processed. A write failure
//! marks the writer unhealthy: admission then answers per `state.on_unavailable`, and `/readyz` says why.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::StoreError;
use super::file_guard::FileGuard;
use super::ledger::{Ledger, Write};
use crate::metrics::LedgerMetrics;

/// Most writes in one transaction.
const MAX_BATCH: usize = 512;
/// After the first write of a batch, how long more writes may gather before the commit (a flush commits at
/// once). Bounds what a crash can lose and lets one commit serve many requests.
const GATHER: Duration = Duration::from_millis(2);
/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// WAL size (pages of 4 KiB) at which the writer checkpoints by itself, when the checkpointer cannot keep up (a
/// core saturated for a long time leaves an idle-priority thread no time).
const WAL_AUTOCHECKPOINT_PAGES: u32 = 8192;

/// A write and its sequence number.
type Msg = (u64, Write);

/// The queue's sending end, and the sequence number of the last write queued (both under one lock, so that
/// writes arrive in sequence order).
struct Queue {
    tx: Sender<Msg>,
    sent: u64,
}

/// The sequence number of the last write the writer has processed (committed, or lost with a failed batch).
#[derive(Default)]
struct Progress {
    done: Mutex<u64>,
    changed: Condvar,
}

impl Progress {
    fn set(&self, seq: u64) {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        *done = (*done).max(seq);
        self.changed.notify_all();
    }
}

pub struct Writer {
    queue: Mutex<Queue>,
    progress: Arc<Progress>,
    /// Stopped when the writer goes (its `Drop`).
    _checkpointer: Checkpointer,
    /// The writer thread, unparked by `wait_processed` so that a waiting reader does not sit out the gather
    /// window.
    thread: std::thread::Thread,
    healthy: Arc<AtomicBool>,
    last_error: Arc<Mutex<Option<String>>>,
    /// The ledger file's identity: checked after every commit and by the checkpointer's rounds.
    file: Arc<FileGuard>,
    metrics: LedgerMetrics,
}

impl Writer {
    pub fn start(path: &Path, metrics: LedgerMetrics) -> anyhow::Result<Self> {
        let mut ledger = Ledger::open(path)?;
        ledger.set_autocheckpoint(WAL_AUTOCHECKPOINT_PAGES)?;
        let file = Arc::new(FileGuard::new(path)?);
        let checkpointer = Checkpointer::start(path, metrics.clone(), file.clone())?;
        let applied = ledger.applied_seq()?;
        let (tx, rx) = channel();
        let healthy = Arc::new(AtomicBool::new(true));
        let last_error = Arc::new(Mutex::new(None));
        let progress = Arc::new(Progress::default());
        progress.set(applied);
        let status = Status {
            healthy: healthy.clone(),
            last_error: last_error.clone(),
            metrics: metrics.clone(),
            file: file.clone(),
            progress: progress.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || run(&mut ledger, &rx, &status))?;
        Ok(Self {
            queue: Mutex::new(Queue { tx, sent: applied }),
            progress,
            _checkpointer: checkpointer,
            thread: handle.thread().clone(),
            healthy,
            last_error,
            file,
            metrics,
        })
    }

    /// Queues a write and returns its sequence number. While the writer gathers a batch this is a queue push:
    /// no wake-up, no system call.
    pub fn send(&self, w: Write) -> u64 {
        self.metrics.pending_writes.inc();
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.sent += 1;
        let seq = queue.sent;
        if queue.tx.send((seq, w)).is_err() {
            drop(queue);
            self.fail("the ledger writer stopped".into());
        }
        seq
    }

    /// The sequence number of the last write queued.
    pub fn last_sent(&self) -> u64 {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).sent
    }

    /// The sequence number of the last write processed.
    pub fn processed(&self) -> u64 {
        *self.progress.done.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until the write numbered `seq` (and every one before it) is processed, at most `within`. The
    /// writer commits at once instead of finishing its gather window. Never called on a request's thread.
    pub fn wait_processed(&self, seq: u64, within: Duration) -> Result<(), StoreError> {
        let deadline = std::time::Instant::now() + within;
        let mut done = self.progress.done.lock().unwrap_or_else(|p| p.into_inner());
        while *done < seq {
            self.thread.unpark();
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(StoreError::Timeout {
                    what: "the ledger writer",
                    ms: u64::try_from(within.as_millis()).unwrap_or(u64::MAX),
                });
            }
            done = self
                .progress
                .changed
                .wait_timeout(done, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Waits until everything queued so far is committed (bounded wait).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.wait_processed(self.last_sent(), Duration::from_secs(10))
    }

    /// `Err` with the last write error while the ledger cannot be written, or for good once its file was
    /// deleted or replaced. No system call: the request path asks this on every admission.
    pub fn health(&self) -> Result<(), String> {
        if let Some(why) = self.file.lost() {
            return Err(why.to_owned());
        }
        if self.healthy.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "the ledger cannot be written".into()))
        }
    }

    /// Looks at the ledger file now (one `stat`), for `/readyz`.
    pub fn check_file(&self) -> Result<(), String> {
        self.file.check()
    }

    fn fail(&self, why: String) {
        self.healthy.store(false, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }
}

/// Checkpoints the WAL from its own thread at the lowest CPU priority. A checkpoint copies up to a few MiB of
/// pages and syncs the file; done by the writer on its commit path (SQLite's default), that burst competes with
/// the request path for the core every few hundred milliseconds — what a p99 sees. Here it runs when the core
/// would otherwise idle, and yields to any request at once.
struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: std::thread::Thread,
}

impl Checkpointer {
    fn start(path: &Path, metrics: LedgerMetrics, file: Arc<FileGuard>) -> anyhow::Result<Self> {
        let ledger = Ledger::open_for_checkpoints(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::Builder::new()
            .name("ledger-checkpoint".into())
            .spawn(move || {
                crate::state::priority::lowest_for_this_thread();
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::park_timeout(CHECKPOINT_EVERY);
                    // While idle, nothing commits: this is where a deleted ledger file is noticed.
                    if file.check().is_err() {
                        continue;
                    }
                    match ledger.checkpoint() {
                        Ok(behind) => {
                            metrics.wal_pages.set(behind);
                        }
                        Err(e) => {
                            metrics.checkpoint_errors.inc();
                            tracing::warn!(error = %e, "ledger: checkpoint failed (retried)");
                        }
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: handle.thread().clone(),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.unpark();
    }
}

/// What the writer thread reports to the rest of the store.
struct Status {
    healthy: Arc<AtomicBool>,
    last_error: Arc<Mutex<Option<String>>>,
    metrics: LedgerMetrics,
    file: Arc<FileGuard>,
    progress: Arc<Progress>,
}

/// Blocks (a futex wait) only while idle. After the first write of a batch it parks for the gather window, so
/// the writes that follow are queue pushes that wake nobody — a wake-up per request would cost a context switch
/// on a busy core — then drains the queue and commits once. A reader waiting for its writes unparks it early.
fn run(ledger: &mut Ledger, rx: &Receiver<Msg>, status: &Status) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        std::thread::park_timeout(GATHER);
        let mut next = Some(first);
        loop {
            let mut through = 0;
            while let Some((seq, w)) = next.take() {
                batch.push(w);
                through = seq;
                if batch.len() >= MAX_BATCH {
                    break;
                }
                next = rx.try_recv().ok();
            }
            commit(ledger, &batch, through, status);
            // One `stat` per batch: under load the checkpointer (idle priority) may not get to look.
            let _ = status.file.check();
            batch.clear();
            status.progress.set(through);
            // A full batch left the rest queued: commit it too before blocking again.
            next = rx.try_recv().ok();
            if next.is_none() {
                break;
            }
        }
    }
}

fn commit(ledger: &mut Ledger, batch: &[Write], through: u64, status: &Status) {
    let now = crate::clock::stamp(jiff::Timestamp::now());
    let result = ledger.apply(batch, through, &now);
    let n = i64::try_from(batch.len()).unwrap_or(i64::MAX);
    let metrics = &status.metrics;
    metrics.pending_writes.dec_by(n);
    match result {
        Ok(()) => {
            metrics.commits.inc();
            metrics.writes.inc_by(n.unsigned_abs());
            status.healthy.store(true, Ordering::Relaxed);
        }
        Err(e) => {
            metrics.commit_errors.inc();
            tracing::error!(error = %e, lost = batch.len(), "ledger: cannot commit writes");
            *status.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(format!("ledger: {e}"));
            status.healthy.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{GrantId, RequestRecord};

    /// Committed pages reach the database file through the checkpointer, long before the WAL is large enough for
    /// the writer to checkpoint by itself.
    #[test]
    fn the_checkpointer_copies_the_wal_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite3");
        let metrics = LedgerMetrics::default();
        let writer = Writer::start(&path, metrics.clone()).unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let before = size();
        for row in 1..=2000 {
            writer.send(Write::Reserve {
                row,
                grant: GrantId::random(),
                record: RequestRecord {
                    request_id: format!("req-{row}"),
                    user: format!("user-{}", row % 50),
                    team: "t".into(),
                    day: "2026-11-25".into(),
                    month: "2026-11".into(),
                    model: "viduq2".into(),
                },
                off_peak: false,
                estimate: 10,
            });
        }
        writer.flush().unwrap();
        assert_eq!(metrics.pending_writes.get(), 0);
        assert_eq!(metrics.writes.get(), 2000);
        assert!((1..=2000).contains(&metrics.commits.get()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while size() <= before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            size() > before,
            "the database file never grew: {before} bytes"
        );
        drop(writer);
    }
}
