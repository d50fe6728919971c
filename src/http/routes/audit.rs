//! `GET /gateway/v1/audit` (admins): the audit trail, newest first, by kind and time, in pages.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::lifecycle::{
    DEFAULT_LIMIT, MAX_LIMIT, admins_only, cursor_of, parse_cursor, store_unavailable,
};
use crate::auth::Identity;
use crate::http::app_state::AppState;
use crate::http::error::GatewayError;
use crate::http::openapi::{Error400, Error401, Error403, Error503, GATEWAY};
use crate::state::{AuditEntry, AuditQuery};

/// The kinds of entry, for the message that refuses another.
pub const KINDS: [&str; 9] = [
    "config_load",
    "config_reload",
    "reservation_settled",
    "reservation_released",
    "reservation_auto_released",
    "task_read",
    "tasks_listed",
    "task_cancelled",
    "usage_read",
];

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// One kind of entry: config_load, config_reload, reservation_settled, reservation_released,
    /// reservation_auto_released, task_read, tasks_listed, task_cancelled, usage_read.
    kind: Option<String>,
    /// At or after (RFC 3339, or a date: its start, UTC).
    since: Option<String>,
    /// Before (RFC 3339, or a date: its start, UTC).
    until: Option<String>,
    /// Entries per page (1 to 500; 50).
    limit: Option<usize>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// A page of the audit trail.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AuditList {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
    /// Pass as `?cursor=` for the next page; `null` on the last one. A page may be short (a `kind` filter on
    /// Redis reads at most 2 000 entries per page): follow the cursor until it is `null`.
    pub next_cursor: Option<String>,
}

/// `2026-12-03T10:00:00Z` (any RFC 3339 time) or `2026-12-03` (its start, UTC), as entries are stamped.
fn instant(name: &str, raw: &str) -> Result<String, GatewayError> {
    let at = raw
        .parse::<jiff::Timestamp>()
        .ok()
        .or_else(|| {
            raw.parse::<jiff::civil::Date>()
                .ok()
                .and_then(|d| format!("{d}T00:00:00Z").parse::<jiff::Timestamp>().ok())
        })
        .ok_or_else(|| {
            GatewayError::BadRequest(format!(
                "?{name}={raw} is not a time: use RFC 3339 (2026-12-03T10:00:00Z) or a date (2026-12-03, UTC)"
            ))
        })?;
    Ok(crate::clock::stamp(at))
}

/// The audit trail, newest first (admins): config loads and reloads, and admins' actions on what is not theirs.
#[utoipa::path(get, path = "/gateway/v1/audit", tag = GATEWAY, params(AuditParams),
    responses(
        (status = 200, description = "A page of audit entries.", body = AuditList),
        (status = 400, response = Error400), (status = 401, response = Error401), (status = 403, response = Error403),
        (status = 503, response = Error503),
    ))]
pub async fn audit(
    identity: Identity,
    query: web::Query<AuditParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    admins_only(&identity, "the audit trail")?;
    let q = query.into_inner();
    if let Some(kind) = q.kind.as_deref()
        && !KINDS.contains(&kind)
    {
        return Err(GatewayError::BadRequest(format!(
            "?kind={kind} is not a kind of audit entry: use one of {}",
            KINDS.join(", ")
        )));
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(GatewayError::BadRequest(format!(
            "?limit={limit} is out of range: use 1 to {MAX_LIMIT}"
        )));
    }
    let query = AuditQuery {
        kind: q.kind,
        since: q
            .since
            .as_deref()
            .map(|s| instant("since", s))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|u| instant("until", u))
            .transpose()?,
        limit,
        before: q.cursor.as_deref().map(parse_cursor).transpose()?,
    };
    let page = state
        .store
        .audit_entries(&query)
        .await
        .map_err(store_unavailable)?;
    Ok(HttpResponse::Ok().json(AuditList {
        entries: page.entries,
        next_cursor: page.next.map(|(at, id)| cursor_of(&at, &id)),
    }))
}
