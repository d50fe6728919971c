//! What can go wrong asking the store.

/// A store call that could not be answered. Admission answers any of these per `state.on_unavailable`
/// (`FailOpen`); reports answer 503.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot record what it would grant (the ledger cannot be written, or its file was lost).
    #[error("{0}")]
    Unavailable(String),
    /// A read failed.
    #[error("ledger: {0}")]
    Read(String),
    /// The backend did not answer in time.
    #[error("{what} did not answer within {ms} ms")]
    Timeout { what: &'static str, ms: u64 },
    /// The backend cannot be reached (a network backend: refused, reset, authentication, a script error).
    #[error("{0}")]
    Unreachable(String),
    /// The backend's worker thread is gone (the process is stopping).
    #[error("the {0} thread stopped")]
    Stopped(&'static str),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Read(e.to_string())
    }
}
