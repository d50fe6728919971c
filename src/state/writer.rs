//! The ledger writer: one thread that owns the write connection and commits whatever has queued up as one
//! transaction, so SQLite's per-commit cost (WAL write, file locks) is paid per batch, not per request. Reads
//! that must see everything written so far call `flush` first. A write failure marks the writer unhealthy:
//! admission then answers per `state.on_unavailable`, and `/readyz` says why.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ledger::{Ledger, Write};

/// Most writes in one transaction.
const MAX_BATCH: usize = 512;
/// After the first write of a batch, how long more writes may gather before the commit (a flush commits at
/// once). Bounds what a crash can lose and lets one commit serve many requests.
const GATHER: Duration = Duration::from_millis(2);

enum Msg {
    Write(Write),
    Flush(SyncSender<()>),
}

pub struct Writer {
    tx: Sender<Msg>,
    /// The writer thread, unparked by `flush` so that a waiting reader does not sit out the gather window.
    thread: std::thread::Thread,
    healthy: Arc<AtomicBool>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl Writer {
    pub fn start(path: &Path) -> anyhow::Result<Self> {
        let mut ledger = Ledger::open(path)?;
        let (tx, rx) = channel();
        let healthy = Arc::new(AtomicBool::new(true));
        let last_error = Arc::new(Mutex::new(None));
        let (h, e) = (healthy.clone(), last_error.clone());
        let handle = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || run(&mut ledger, &rx, &h, &e))?;
        Ok(Self {
            tx,
            thread: handle.thread().clone(),
            healthy,
            last_error,
        })
    }

    /// Queues a write. While the writer gathers a batch this is a queue push: no wake-up, no system call.
    pub fn send(&self, w: Write) {
        if self.tx.send(Msg::Write(w)).is_err() {
            self.fail("the ledger writer stopped".into());
        }
    }

    /// Waits until everything sent so far is committed (bounded wait).
    pub fn flush(&self) {
        let (done_tx, done_rx) = sync_channel(1);
        let sent = self.tx.send(Msg::Flush(done_tx)).is_ok();
        self.thread.unpark();
        if sent && done_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            tracing::error!("the ledger writer did not flush within 10 s");
        }
    }

    /// `Err` with the last write error while the ledger cannot be written.
    pub fn health(&self) -> Result<(), String> {
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

    fn fail(&self, why: String) {
        self.healthy.store(false, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }
}

/// Blocks (a futex wait) only while idle. After the first write of a batch it parks for the gather window, so
/// the writes that follow are queue pushes that wake nobody — a wake-up per request would cost a context switch
/// on a busy core — then drains the queue and commits once. A flush unparks it early.
fn run(
    ledger: &mut Ledger,
    rx: &Receiver<Msg>,
    healthy: &AtomicBool,
    last_error: &Mutex<Option<String>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut waiters = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        if matches!(next, Some(Msg::Write(_))) {
            std::thread::park_timeout(GATHER);
        }
        loop {
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Write(w) => batch.push(w),
                    Msg::Flush(done) => waiters.push(done),
                }
                if batch.len() >= MAX_BATCH {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if !batch.is_empty() {
                commit(ledger, &batch, healthy, last_error);
                batch.clear();
            }
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
            // A full batch left the rest queued: commit it too before blocking again.
            next = rx.try_recv().ok();
            if next.is_none() {
                break;
            }
        }
    }
}

fn commit(
    ledger: &mut Ledger,
    batch: &[Write],
    healthy: &AtomicBool,
    last_error: &Mutex<Option<String>>,
) {
    let now = format!("{:.3}", jiff::Timestamp::now());
    match ledger.apply(batch, &now) {
        Ok(()) => healthy.store(true, Ordering::Relaxed),
        Err(e) => {
            tracing::error!(error = %e, lost = batch.len(), "ledger: cannot commit writes");
            *last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("ledger: {e}"));
            healthy.store(false, Ordering::Relaxed);
        }
    }
}
