//! Audit entries: who changed what (config loads and reloads) and what admins did (reservations resolved, another
//! user's task read or cancelled, another's usage read), kept by the state backend and listed newest first.

use serde::{Deserialize, Serialize};

/// One audit entry. `detail` never holds a secret's value (a changed secret is named by its key).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Unique (a UUID); breaks ties between entries of the same millisecond.
    pub id: String,
    /// When (RFC 3339, UTC, milliseconds).
    pub at: String,
    /// `config_load`, `config_reload`, `reservation_settled`, `reservation_released`,
    /// `reservation_auto_released`, `task_read`, `tasks_listed`, `task_cancelled`, `usage_read`.
    pub kind: String,
    /// The admin who acted, or `gateway` for what the gateway did itself.
    pub actor: String,
    /// `applied`, `refused`, `ok`, …
    pub outcome: String,
    /// What the entry is about (keys changed, the reservation, the task, whose usage …).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// Which entries, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub kind: Option<String>,
    /// At or after (RFC 3339, as stamped).
    pub since: Option<String>,
    /// Before (RFC 3339, as stamped).
    pub until: Option<String>,
    pub limit: usize,
    /// Older than this entry (`at`, `id`): the previous page's last.
    pub before: Option<(String, String)>,
}

/// A page of entries, and where the next starts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next: Option<(String, String)>,
}
