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
    tx: Mutex<Sender<Msg>>,
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
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || run(&mut ledger, &rx, &h, &e))?;
        Ok(Self {
            tx: Mutex::new(tx),
            healthy,
            last_error,
        })
    }

    pub fn send(&self, w: Write) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if tx.send(Msg::Write(w)).is_err() {
            self.fail("the ledger writer stopped".into());
        }
    }

    /// Waits until everything sent so far is committed (bounded wait).
    pub fn flush(&self) {
        let (done_tx, done_rx) = sync_channel(1);
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Msg::Flush(done_tx))
            .is_ok();
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

fn run(
    ledger: &mut Ledger,
    rx: &Receiver<Msg>,
    healthy: &AtomicBool,
    last_error: &Mutex<Option<String>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut waiters = Vec::new();
    while let Ok(first) = rx.recv() {
        let deadline = std::time::Instant::now() + GATHER;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Write(w) => batch.push(w),
                Msg::Flush(done) => waiters.push(done),
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            next = if waiters.is_empty() {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                rx.recv_timeout(left).ok()
            } else {
                rx.try_recv().ok()
            };
        }
        if !batch.is_empty() {
            match ledger.apply(&batch) {
                Ok(()) => healthy.store(true, Ordering::Relaxed),
                Err(e) => {
                    tracing::error!(error = %e, lost = batch.len(), "ledger: cannot commit writes");
                    *last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(format!("ledger: {e}"));
                    healthy.store(false, Ordering::Relaxed);
                }
            }
            batch.clear();
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
}
