//! Ledger reads off the actix workers: a reader is one thread with its own read-only connection, running the
//! jobs sent to it in order and answering through a oneshot channel. SQLite's WAL lets it read while the writer
//! commits. The memory backend keeps two: one for short indexed reads on the request path, one for reports, so
//! a report scanning a large ledger never stands in front of a request.

use std::future::Future;
use std::path::Path;
use std::sync::mpsc::{Sender, channel};

use super::StoreError;
use super::ledger::Ledger;

type Job = Box<dyn FnOnce(&Ledger) + Send>;

pub struct Reader {
    name: &'static str,
    tx: Sender<Job>,
}

impl Reader {
    /// Opens a read-only connection to the (existing) ledger at `path` and starts the thread. It ends when the
    /// reader is dropped and its queue is empty.
    pub fn start(path: &Path, name: &'static str) -> anyhow::Result<Self> {
        let ledger = Ledger::open_read_only(path)?;
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&ledger);
                }
            })?;
        Ok(Self { name, tx })
    }

    /// Queues a job that answers nobody (it reports by its own means).
    pub fn submit(&self, job: impl FnOnce(&Ledger) + Send + 'static) -> Result<(), StoreError> {
        self.tx
            .send(Box::new(job))
            .map_err(|_| StoreError::Stopped(self.name))
    }

    /// Runs `read` on the reader's thread; the future resolves with its answer.
    pub fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Ledger) -> Result<T, StoreError> + Send + 'static,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queued = self.submit(move |ledger| {
            let _ = tx.send(read(ledger));
        });
        let name = self.name;
        async move {
            queued?;
            rx.await.map_err(|_| StoreError::Stopped(name))?
        }
    }
}
