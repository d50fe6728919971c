//! Writing the audit trail: every entry is a JSON log line on the `audit` target and an entry in the state backend
//! (`GET /gateway/v1/audit`). Config loads and reloads (version, keys changed — a secret by its key only —, applied
//! or refused and why) and admins' actions on what is not theirs (reservations resolved, another user's task read or
//! cancelled, another's usage read).

use std::sync::Arc;

use serde_json::{Value, json};

use crate::state::{Audit, AuditEntry, Store};

/// Who did what the gateway did by itself (a load, an automatic release).
pub const GATEWAY: &str = "gateway";

/// An entry made now.
pub fn entry(
    now: jiff::Timestamp,
    kind: &str,
    actor: &str,
    outcome: &str,
    detail: Value,
) -> AuditEntry {
    AuditEntry {
        // Time-ordered (v7): entries of one millisecond list in the order they were made.
        id: uuid::Uuid::now_v7().to_string(),
        at: crate::clock::stamp(now),
        kind: kind.to_owned(),
        actor: actor.to_owned(),
        outcome: outcome.to_owned(),
        detail,
    }
}

fn log(entry: &AuditEntry) {
    tracing::info!(
        target: "audit",
        kind = %entry.kind,
        actor = %entry.actor,
        outcome = %entry.outcome,
        detail = %entry.detail,
        audit_id = %entry.id,
        "audit"
    );
}

async fn store_entry<S: Audit + ?Sized>(store: &S, entry: AuditEntry) {
    if let Err(e) = store.audit(entry).await {
        tracing::error!(error = %e, "the state backend could not keep an audit entry (it is in the log)");
    }
}

/// Logs `entry` on the `audit` target and keeps it in the store (in the background: the action it records has
/// happened; a store that cannot take it logs an ERROR, the log line stays).
pub fn record(store: &Arc<dyn Store>, entry: AuditEntry) {
    log(&entry);
    let store = store.clone();
    let spawned = tokio::runtime::Handle::try_current()
        .map(|h| h.spawn(async move { store_entry(store.as_ref(), entry).await }));
    if spawned.is_err() {
        tracing::error!("no runtime to keep an audit entry (it is in the log)");
    }
}

/// [`record`], waiting until the store has the entry (a command that exits right after).
pub async fn keep<S: Audit + ?Sized>(store: &S, entry: AuditEntry) {
    log(&entry);
    store_entry(store, entry).await;
}

/// A configuration put in force at start.
pub fn config_loaded(store: &Arc<dyn Store>, now: jiff::Timestamp, version: &str, origin: &str) {
    record(
        store,
        entry(
            now,
            "config_load",
            GATEWAY,
            "applied",
            json!({"version": version, "origin": origin}),
        ),
    );
}

/// An admin acted on what is someone else's: `detail` says on what.
pub fn admin_action(
    store: &Arc<dyn Store>,
    now: jiff::Timestamp,
    kind: &str,
    admin: &str,
    detail: Value,
) {
    record(store, entry(now, kind, admin, "ok", detail));
}
