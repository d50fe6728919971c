//! `GET /ent/v2/tasks/{id}/creations` and `POST /ent/v2/tasks/{id}/cancel`, forwarded to Vidu (a cancel with the
//! gateway's own body `{}`, never the caller's).

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};

use super::send;
use crate::auth::Identity;
use crate::forward::upstream::{Endpoint, Upstream};
use crate::http::app_state::AppState;
use crate::http::error::GatewayError;
use crate::http::openapi::{
    Error400, Error401, Error404, Error408, Error413, Error415, Error502, Error504, VIDU,
    ViduAnswer,
};
use crate::http::responses::upstream_response;
use crate::read;
use crate::tasks::learn;

/// What Vidu gets on cancel, always: the task is named by the path alone.
const CANCEL_BODY: &[u8] = b"{}";

/// Largest body accepted on cancel (Vidu's cancel takes at most a small JSON object).
const MAX_CANCEL_BODY: usize = 64 * 1024;

/// A task id as it may appear in a path: 1–64 of `[A-Za-z0-9_-]`. Anything else cannot be a Vidu task.
fn task_id(raw: &str) -> Result<&str, GatewayError> {
    let ok = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(raw)
    } else {
        Err(GatewayError::TaskNotFound)
    }
}

/// Who may see a task: its creator; team members for queries when `policy.team_can_read_tasks`; admins.
/// Everyone else — and any id the gateway did not create — gets the answer an unknown id gets (no existence
/// leak), and Vidu is not asked. Admins may ask about any id.
async fn may_access(
    state: &AppState,
    identity: &Identity,
    id: &str,
    query: bool,
) -> Result<(), GatewayError> {
    let task = state.store.task(id).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "ledger: cannot read task ownership");
        None
    });
    if identity.is_admin {
        // An admin reading what is not theirs (or a task the gateway did not create) is audited; a cancel once
        // Vidu has answered it.
        if query && task.as_ref().is_none_or(|t| t.user != identity.user) {
            crate::audit::admin_action(
                &state.store,
                state.clock.now(),
                "task_read",
                &identity.user,
                serde_json::json!({
                    "task_id": id,
                    "owner": task.as_ref().map(|t| t.user.as_str()),
                    "team": task.as_ref().map(|t| t.team.as_str()),
                }),
            );
        }
        return Ok(());
    }
    let Some(task) = task else {
        return Err(GatewayError::TaskNotFound);
    };
    let team_reads = query
        && state.config.current().settings.policy.team_can_read_tasks
        && identity.team.as_deref() == Some(task.team.as_str())
        && !task.team.is_empty();
    if task.user == identity.user || team_reads {
        Ok(())
    } else {
        Err(GatewayError::TaskNotFound)
    }
}

/// Query a task: its state and, once done, its creations.
///
/// Asked of Vidu and answered unchanged (`state`, `err_code`, `credits`, `creations[]`); the gateway learns the
/// task's state from the answer too. The task's creator may ask, members of its team when
/// `policy.team_can_read_tasks`, and admins; anyone else — and any id the gateway did not create — gets 404
/// `TaskNotFound`, and Vidu is not asked.
#[utoipa::path(get, path = "/ent/v2/tasks/{id}/creations", tag = VIDU,
    params(("id" = String, Path, description = "The task id Vidu gave (`task_id`).")),
    responses(
        (status = 200, description = "Vidu's answer, unchanged (its errors too, with their status).",
            body = ViduAnswer),
        (status = 401, response = Error401), (status = 404, response = Error404), (status = 502, response = Error502),
        (status = 504, response = Error504),
    ))]
pub async fn creations(
    req: HttpRequest,
    identity: Identity,
    path: web::Path<String>,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
) -> Result<HttpResponse, GatewayError> {
    let id = task_id(&path)?;
    may_access(&state, &identity, id, true).await?;
    let answer = send(
        &state,
        &upstream,
        &req,
        Endpoint::TaskCreations,
        Method::GET,
        format!("/ent/v2/tasks/{id}/creations"),
        bytes::Bytes::new(),
    )
    .await?;
    // What the caller learned, the gateway learns too (after the answer; a failure only logs).
    if answer.status.is_success()
        && let Some(seen) = learn::observation(id, &answer.body)
    {
        let (store, metrics) = (state.store.clone(), state.metrics.clone());
        actix_web::rt::spawn(async move {
            learn::learn(store.as_ref(), &metrics, &seen).await;
        });
    }
    Ok(upstream_response(answer))
}

/// Cancel a task (Vidu cancels off-peak tasks).
///
/// Vidu gets `{}` whatever the body (a JSON object, or none): the task is named by the path, whose ownership is
/// checked — the creator and admins may cancel, anyone else gets 404 `TaskNotFound`. A cancel Vidu accepts ends
/// the task and refunds its credits.
#[utoipa::path(post, path = "/ent/v2/tasks/{id}/cancel", tag = VIDU,
    params(("id" = String, Path, description = "The task id Vidu gave (`task_id`).")),
    request_body(content = Option<Object>, content_type = "application/json",
        description = "Optional; read (it must be a JSON object) but never forwarded."),
    responses(
        (status = 200, description = "Vidu's answer, unchanged (`{}` on success; its errors too, with their \
            status).", body = ViduAnswer),
        (status = 400, response = Error400), (status = 401, response = Error401), (status = 404, response = Error404),
        (status = 408, response = Error408), (status = 413, response = Error413), (status = 415, response = Error415),
        (status = 502, response = Error502), (status = 504, response = Error504),
    ))]
pub async fn cancel(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
) -> Result<HttpResponse, GatewayError> {
    let declared = read::check_declared_length(&req, MAX_CANCEL_BODY)?;
    let identity = state.authenticate(&req).await?;
    let id = task_id(&path)?;
    may_access(&state, &identity, id, false).await?;
    // The caller's body is read (and must be a JSON object, as Vidu's would require) but never forwarded:
    // ownership was checked on the path's id, so nothing the caller wrote may reach Vidu beside it.
    let bytes = read::read(payload, declared, MAX_CANCEL_BODY).await?;
    if !bytes.is_empty() {
        read::require_json_content_type(&req)?;
        read::require_json_object(&bytes)?;
    }
    drop(bytes);
    let answer = send(
        &state,
        &upstream,
        &req,
        Endpoint::TaskCancel,
        Method::POST,
        format!("/ent/v2/tasks/{id}/cancel"),
        bytes::Bytes::from_static(CANCEL_BODY),
    )
    .await?;
    if identity.is_admin {
        let owner = state.store.task(id).await.ok().flatten();
        if owner.as_ref().is_none_or(|t| t.user != identity.user) {
            crate::audit::record(
                &state.store,
                crate::audit::entry(
                    state.clock.now(),
                    "task_cancelled",
                    &identity.user,
                    if answer.status.is_success() {
                        "ok"
                    } else {
                        "refused_by_vidu"
                    },
                    serde_json::json!({
                        "task_id": id,
                        "owner": owner.as_ref().map(|t| t.user.as_str()),
                        "team": owner.as_ref().map(|t| t.team.as_str()),
                        "vidu_status": answer.status.as_u16(),
                    }),
                ),
            );
        }
    }
    // A cancel Vidu accepted ends the task: it is refunded.
    if answer.status.is_success() {
        let seen = learn::cancelled(id);
        let (store, metrics) = (state.store.clone(), state.metrics.clone());
        actix_web::rt::spawn(async move {
            learn::learn(store.as_ref(), &metrics, &seen).await;
        });
    }
    Ok(upstream_response(answer))
}
