//! Tasks followed to their end, over HTTP: Vidu's callbacks in (`POST /gateway/v1/callbacks/vidu`), the task list
//! (`GET /gateway/v1/tasks`), and the admins' view of unsettled reservations (`GET /gateway/v1/reservations`,
//! `POST /gateway/v1/reservations/{id}/settle` and `…/release`).

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::Identity;
use crate::callbacks::signature::verify_within;
use crate::config::UpstreamMode;
use crate::forward::upstream::Upstream;
use crate::http::app_state::{AppState, request_id};
use crate::http::error::GatewayError;
use crate::http::openapi::{
    Error400, Error401, Error403, Error404, Error408, Error413, Error503, GATEWAY, ViduAnswer,
};
use crate::metrics::OutcomeLabels;
use crate::read;
use crate::state::{ReservationView, Resolution, TaskQuery, TaskRecord, TaskState};
use crate::tasks::learn::ask;

/// The path Vidu's callbacks arrive on.
pub const CALLBACK_PATH: &str = "/gateway/v1/callbacks/vidu";
/// Largest callback body accepted (a query answer: a few KB).
const MAX_CALLBACK_BODY: usize = 1024 * 1024;
/// A task a callback named is due for the reconciler this long after the callback unless the callback's own
/// confirming query answers first (it is on its way; the reconciler must not ask twice).
pub const CONFIRM_GRACE_MS: u64 = 30_000;
/// Tasks per page unless `?limit=` says otherwise, and the most a page may hold.
pub(super) const DEFAULT_LIMIT: usize = 50;
pub(super) const MAX_LIMIT: usize = 500;

/// What a callback is answered (at once; the work happens after): `{}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CallbackAccepted {}

/// A page of `GET /gateway/v1/tasks`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = TaskList)]
pub struct TaskList {
    /// Newest first.
    pub tasks: Vec<TaskRecord>,
    /// Pass as `?cursor=` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// The answer of `GET /gateway/v1/reservations`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Reservations {
    pub reservations: Vec<ReservationView>,
}

/// The answer of a settle or release: the reservation as it was, and what became of it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Resolved {
    pub reservation: ReservationView,
    /// `settled` or `released`.
    pub outcome: &'static str,
    /// The credits charged (0 on release).
    pub credits: u64,
}

pub(super) fn store_unavailable(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::ServiceUnavailable {
        message: format!("the state backend cannot be reached ({e}); retry shortly"),
        retry_after_secs: 5,
    }
}

pub(super) fn admins_only(identity: &Identity, what: &str) -> Result<(), GatewayError> {
    if identity.is_admin {
        Ok(())
    } else {
        Err(GatewayError::Forbidden(format!(
            "{what} is for admins: the token needs the auth.admin_role role"
        )))
    }
}

/// The key Vidu signs callbacks with: the enterprise key, or the sandbox's own.
fn callback_key(state: &AppState) -> Vec<u8> {
    let config = state.config.current();
    match config.settings.upstream.mode {
        UpstreamMode::Sandbox => crate::forward::sandbox::CALLBACK_KEY.as_bytes().to_vec(),
        UpstreamMode::Vidu => config
            .settings
            .upstream
            .api_key
            .expose()
            .as_bytes()
            .to_vec(),
    }
}

/// The task a callback body names (`id`, or `task_id`; a string or a number).
fn task_named(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let id = v.get("id").or_else(|| v.get("task_id"))?;
    let id = match id {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let valid = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then_some(id)
}

/// Vidu's task-state callbacks (for Vidu, not for callers).
///
/// The signature is checked exactly as Vidu describes it (HMAC-SHA256 with the enterprise key over the URL the
/// gateway registered, `Date` within `callbacks.max_skew_secs`), the nonce must be new (across replicas), and then
/// the callback is only a hint: the task is marked due for the reconciler (so nothing is lost if this process
/// stops now), the answer goes out at once, and the task's state is confirmed by a query before anything changes.
#[utoipa::path(post, path = "/gateway/v1/callbacks/vidu", tag = GATEWAY, security(()),
    params(
        ("Date" = String, Header, description = "Signed; within `callbacks.max_skew_secs` of now."),
        ("x-request-nonce" = String, Header, description = "Signed; never seen before."),
        ("X-HMAC-SIGNED-HEADERS" = String, Header, description = "The headers signed, e.g. `Date;x-request-nonce`."),
        ("X-HMAC-SIGNATURE" = String, Header, description = "base64(HMAC-SHA256(key, signing string))."),
        ("X-HMAC-ALGORITHM" = String, Header, description = "`hmac-sha256`."),
        ("X-HMAC-ACCESS-KEY" = String, Header, description = "`vidu`."),
    ),
    request_body(content = ViduAnswer, content_type = "application/json",
        description = "Vidu's query-task body (`id` or `task_id`, `state`, …); a hint, confirmed by a query."),
    responses(
        (status = 200, description = "Accepted (the work happens after).", body = CallbackAccepted),
        (status = 401, response = Error401), (status = 408, response = Error408), (status = 413, response = Error413),
        (status = 503, response = Error503),
    ))]
pub async fn vidu_callback(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
) -> Result<HttpResponse, GatewayError> {
    let count = |outcome: &'static str| {
        state
            .metrics
            .lifecycle
            .callbacks
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    };
    let declared = read::check_declared_length(&req, MAX_CALLBACK_BODY)?;
    let body = read::read(payload, declared, MAX_CALLBACK_BODY).await?;
    let config = state.config.current();
    let callbacks = &config.settings.callbacks;
    // Path and query of the URL the gateway registered, not of the request line a proxy may have rewritten.
    let registered = callbacks.own_url().and_then(|u| url::Url::parse(&u).ok());
    let (path, query) = match &registered {
        Some(u) => (u.path().to_owned(), u.query().unwrap_or("").to_owned()),
        None => (CALLBACK_PATH.to_owned(), String::new()),
    };
    let window = jiff::SignedDuration::from_secs(
        i64::try_from(callbacks.max_skew_secs).unwrap_or(i64::MAX / 2),
    );
    let headers = req.headers();
    let lookup = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let verified = verify_within(
        &callback_key(&state),
        &path,
        &query,
        lookup,
        state.clock.now(),
        window,
    )
    .map_err(|e| {
        count("bad_signature");
        tracing::warn!(why = %e, "a callback was refused: its signature does not verify");
        GatewayError::Unauthorized {
            message: format!("callback refused: {e}"),
            invalid_token: false,
        }
    })?;
    let ttl = callbacks.max_skew_secs.saturating_mul(2).max(60);
    match state.store.claim_nonce(&verified.nonce, ttl).await {
        Ok(true) => {}
        Ok(false) => {
            count("replayed");
            tracing::warn!(
                "a callback was refused: its x-request-nonce was seen before (a replay)"
            );
            return Err(GatewayError::Unauthorized {
                message: "callback refused: this x-request-nonce was used before".into(),
                invalid_token: false,
            });
        }
        Err(e) => {
            count("unavailable");
            return Err(store_unavailable(e));
        }
    }
    let Some(task_id) = task_named(&body) else {
        count("unknown_task");
        return Ok(HttpResponse::Ok().json(CallbackAccepted {}));
    };
    if let Err(e) = state.store.nudge(&task_id, CONFIRM_GRACE_MS).await {
        count("unavailable");
        return Err(store_unavailable(e));
    }
    count("accepted");
    let store = state.store.clone();
    let metrics = state.metrics.clone();
    let rid = request_id(&req);
    actix_web::rt::spawn(async move {
        ask(&upstream, store.as_ref(), &metrics, &task_id, rid).await;
    });
    Ok(HttpResponse::Ok().json(CallbackAccepted {}))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TasksQuery {
    /// A user's tasks (admins).
    user: Option<String>,
    /// A team's tasks (admins).
    team: Option<String>,
    /// Only tasks in this state.
    #[param(value_type = Option<TaskState>)]
    state: Option<String>,
    /// Tasks per page (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// The previous page's `next_cursor`, as is.
    cursor: Option<String>,
}

pub(super) fn cursor_of(created_at: &str, task_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{created_at}|{task_id}"))
}

pub(super) fn parse_cursor(raw: &str) -> Result<(String, String), GatewayError> {
    URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once('|')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        })
        .ok_or_else(|| {
            GatewayError::BadRequest(
                "?cursor= is not a cursor this gateway gave out: pass the previous page's next_cursor as is, or \
                 leave it out for the first page"
                    .into(),
            )
        })
}

/// Tasks with their lifecycle, newest first: the caller's (admins: anyone's).
///
/// Each task the gateway created: state, estimate, charged, refunded, relay status. Paginated by an opaque cursor.
#[utoipa::path(get, path = "/gateway/v1/tasks", tag = GATEWAY, params(TasksQuery),
    responses(
        (status = 200, description = "A page of tasks.", body = TaskList),
        (status = 400, response = Error400), (status = 401, response = Error401), (status = 403, response = Error403),
        (status = 503, response = Error503),
    ))]
pub async fn tasks(
    identity: Identity,
    query: web::Query<TasksQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let q = query.into_inner();
    if !identity.is_admin && (q.user.is_some() || q.team.is_some()) {
        return Err(GatewayError::Forbidden(
            "only admins (auth.admin_role) may list other users' or a team's tasks: drop ?user= and ?team= to see \
             your own"
                .into(),
        ));
    }
    let state_filter = match q.state.as_deref() {
        None => None,
        Some(s) => Some(
            TaskState::ALL
                .into_iter()
                .find(|t| t.as_str() == s)
                .ok_or_else(|| {
                    GatewayError::BadRequest(format!(
                        "?state={s} is not a task state: use one of created, queueing, processing, success, failed, \
                         cancelled"
                    ))
                })?,
        ),
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(GatewayError::BadRequest(format!(
            "?limit={limit} is out of range: use 1 to {MAX_LIMIT}"
        )));
    }
    let after = q.cursor.as_deref().map(parse_cursor).transpose()?;
    let (user, team) = if identity.is_admin {
        // Listing what is not the admin's own is reading other users' tasks: audited.
        if q.user.as_deref() != Some(identity.user.as_str()) {
            crate::audit::admin_action(
                &state.store,
                state.clock.now(),
                "tasks_listed",
                &identity.user,
                json!({"user": q.user, "team": q.team, "state": q.state}),
            );
        }
        (q.user, q.team)
    } else {
        (Some(identity.user.clone()), None)
    };
    let page = state
        .store
        .tasks(&TaskQuery {
            user,
            team,
            state: state_filter,
            limit,
            after,
        })
        .await
        .map_err(store_unavailable)?;
    Ok(HttpResponse::Ok().json(TaskList {
        tasks: page.tasks,
        next_cursor: page.next.map(|(at, id)| cursor_of(&at, &id)),
    }))
}

/// Reservations not settled (admins).
///
/// Open (in flight) and `unknown` (Vidu's answer was lost: settle or release them by `id`).
#[utoipa::path(get, path = "/gateway/v1/reservations", tag = GATEWAY,
    responses(
        (status = 200, description = "Open and unknown reservations.", body = Reservations),
        (status = 401, response = Error401), (status = 403, response = Error403), (status = 503, response = Error503),
    ))]
pub async fn reservations(
    identity: Identity,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    admins_only(&identity, "GET /gateway/v1/reservations")?;
    let list = state
        .store
        .reservations()
        .await
        .map_err(store_unavailable)?;
    Ok(HttpResponse::Ok().json(Reservations { reservations: list }))
}

/// The body of a settle.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettleBody {
    /// The credits Vidu charged for the task.
    credits: u64,
}

/// Settle an `unknown` reservation: Vidu did create the task and charged `credits` (admins).
#[utoipa::path(post, path = "/gateway/v1/reservations/{id}/settle", tag = GATEWAY,
    params(("id" = String, Path, description = "The reservation's `id` from the list.")),
    request_body(content = SettleBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Settled.", body = Resolved),
        (status = 400, response = Error400), (status = 401, response = Error401), (status = 403, response = Error403),
        (status = 404, response = Error404), (status = 503, response = Error503),
    ))]
pub async fn settle(
    identity: Identity,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    admins_only(&identity, "POST /gateway/v1/reservations/{id}/settle")?;
    let credits = serde_json::from_slice::<SettleBody>(&body)
        .map_err(|e| {
            GatewayError::BadRequest(format!(
                "the body must be {{\"credits\": N}} with N the credits Vidu charged for the task ({e})"
            ))
        })?
        .credits;
    resolve(&identity, &path, Resolution::Settle(credits), &state).await
}

/// Release an `unknown` reservation: nothing was created; the credits are given back (admins).
#[utoipa::path(post, path = "/gateway/v1/reservations/{id}/release", tag = GATEWAY,
    params(("id" = String, Path, description = "The reservation's `id` from the list.")),
    responses(
        (status = 200, description = "Released.", body = Resolved),
        (status = 401, response = Error401), (status = 403, response = Error403), (status = 404, response = Error404),
        (status = 503, response = Error503),
    ))]
pub async fn release(
    identity: Identity,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    admins_only(&identity, "POST /gateway/v1/reservations/{id}/release")?;
    resolve(&identity, &path, Resolution::Release, &state).await
}

async fn resolve(
    identity: &Identity,
    id: &str,
    how: Resolution,
    state: &AppState,
) -> Result<HttpResponse, GatewayError> {
    let resolved = state
        .store
        .resolve(id, how)
        .await
        .map_err(store_unavailable)?
        .ok_or_else(|| {
            GatewayError::NotFound(format!(
                "no unknown reservation has the id {id:?}: GET /gateway/v1/reservations lists them (open ones \
                 settle by themselves when Vidu answers)"
            ))
        })?;
    let (outcome, credits) = match how {
        Resolution::Settle(n) => ("settled", n),
        Resolution::Release => ("released", 0),
    };
    state
        .metrics
        .lifecycle
        .reservations_resolved
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
    crate::audit::admin_action(
        &state.store,
        state.clock.now(),
        if outcome == "settled" {
            "reservation_settled"
        } else {
            "reservation_released"
        },
        &identity.user,
        json!({
            "id": resolved.id,
            "request_id": resolved.request_id,
            "user": resolved.user,
            "team": resolved.team,
            "estimate": resolved.estimate,
            "credits": credits,
        }),
    );
    Ok(HttpResponse::Ok().json(Resolved {
        reservation: resolved,
        outcome,
        credits,
    }))
}
