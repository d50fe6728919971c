//! `Denial`: why policy or admission refuses a request, in domain terms. The HTTP edge maps it to the envelope
//! (`GatewayError: From<Denial>`); nothing here knows about status codes or headers.

/// Rate-limit style refusals (the edge answers 429 with `Retry-After`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitReason {
    TooManyRequests,
    ConcurrencyLimited,
    CreditBudgetExhausted,
    OffPeakRequired,
    RunningTasksLimited,
}

impl LimitReason {
    /// Every limit reason, each once.
    pub const ALL: [LimitReason; 5] = [
        LimitReason::TooManyRequests,
        LimitReason::ConcurrencyLimited,
        LimitReason::CreditBudgetExhausted,
        LimitReason::OffPeakRequired,
        LimitReason::RunningTasksLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitReason::TooManyRequests => "TooManyRequests",
            LimitReason::ConcurrencyLimited => "ConcurrencyLimited",
            LimitReason::CreditBudgetExhausted => "CreditBudgetExhausted",
            LimitReason::OffPeakRequired => "OffPeakRequired",
            LimitReason::RunningTasksLimited => "RunningTasksLimited",
        }
    }
}

/// A refused request: each variant's message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum Denial {
    /// The user's rules do not allow this (model, duration, resolution, recommended prompt, off-peak).
    #[error("{0}")]
    Forbidden(String),
    /// Policy would have to change a parameter the model cannot run that way (audio with forced off-peak).
    #[error("{0}")]
    PolicyConflict(String),
    /// A limit is reached; waiting `retry_after_secs` helps.
    #[error("{message}")]
    Limited {
        reason: LimitReason,
        message: String,
        retry_after_secs: u64,
    },
    /// The state backend could not decide.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
    /// A bug: the cause goes to the log, the caller sees an opaque message.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl Denial {
    /// The reason the caller sees in the envelope.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::Forbidden(_) => "Forbidden",
            Denial::PolicyConflict(_) => "PolicyConflict",
            Denial::Limited { reason, .. } => reason.as_str(),
            Denial::Unavailable { .. } => "ServiceUnavailable",
            Denial::Internal(_) => "InternalServiceFailure",
        }
    }

    /// Seconds after which retrying can help, when waiting helps.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Denial::Limited {
                retry_after_secs, ..
            }
            | Denial::Unavailable {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }
}
