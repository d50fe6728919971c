//! The gateway's own endpoints under `/gateway/v1`.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use serde_json::json;

use crate::auth::Identity;
use crate::config::Settings;
use crate::http::app_state::AppState;
use crate::http::error::GatewayError;
use crate::http::openapi::{Error400, Error401, Error403, Error503, GATEWAY, VIDU};
use crate::usage::Report;

/// The answer of `GET /gateway/v1/config`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ConfigView<'a> {
    /// Short hash of the effective configuration, secrets redacted (also on `/readyz` and in the logs).
    pub version: &'a str,
    /// Where it was loaded from: a file path, or the built-in `config/default.toml`.
    pub origin: String,
    /// The effective configuration (every key of the configuration reference), secrets `<redacted>`.
    #[schema(value_type = Object)]
    pub config: &'a Settings,
}

/// The answer of `GET /ent/v2/credits`: Vidu's shape, the caller's figures.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Credits {
    /// One entry: the caller's view.
    #[schema(value_type = Vec<Remain>, min_items = 1, max_items = 1)]
    pub remains: [Remain; 1],
}

/// One entry of `remains`, as Vidu names its fields.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Remain {
    /// Always `gateway`: the figures are the gateway's view of the caller, not a Vidu package.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The tightest remaining of the caller's budgets (user, team, global; day and month); 2^53 − 1 when none
    /// applies.
    pub credit_remain: u64,
    /// The running-task cap with the least room left (user, team or global), else Vidu's own as last read (5,
    /// Vidu's default, before the first reading).
    pub concurrency_limit: u32,
    /// The tasks running in that cap's scope.
    pub current_concurrency: u32,
    /// Always 0: the gateway queues nothing.
    pub queue_count: u32,
}

/// The effective configuration, secrets redacted, with its version (admins).
#[utoipa::path(get, path = "/gateway/v1/config", tag = GATEWAY,
    responses(
        (status = 200, description = "The configuration in force.", body = ConfigView),
        (status = 401, response = Error401), (status = 403, response = Error403),
    ))]
pub async fn config(
    identity: Identity,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    if !identity.is_admin {
        return Err(GatewayError::Forbidden(
            "GET /gateway/v1/config is for admins: the token needs the auth.admin_role role".into(),
        ));
    }
    let config = state.config.current();
    Ok(HttpResponse::Ok().json(ConfigView {
        version: &config.version,
        origin: config.origin.to_string(),
        config: &config.settings,
    }))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// A user (admins; others may name only themselves).
    user: Option<String>,
    /// A team (admins; others may name only their own).
    team: Option<String>,
    /// First day, `YYYY-MM-DD` (in `policy.timezone`).
    #[param(format = Date)]
    from: Option<String>,
    /// Last day, `YYYY-MM-DD`.
    #[param(format = Date)]
    to: Option<String>,
}

/// Budgets and per-day usage: the caller's own user and team (admins: any).
///
/// Current budgets (limit, used, remaining, the key that set it), running tasks against their cap, and per day the
/// requests admitted and rejected (by reason) and the credits reserved, settled, released, unknown and refunded.
/// Admins also see the Vidu balance as the balance watch last read it (`vidu_balance`).
#[utoipa::path(get, path = "/gateway/v1/usage", tag = GATEWAY, params(UsageQuery),
    responses(
        (status = 200, description = "The usage report.", body = Report),
        (status = 400, response = Error400), (status = 401, response = Error401), (status = 403, response = Error403),
        (status = 503, response = Error503),
    ))]
pub async fn usage(
    identity: Identity,
    query: web::Query<UsageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let q = query.into_inner();
    for (what, asked, own) in [
        ("user", &q.user, Some(&identity.user)),
        ("team", &q.team, identity.team.as_ref()),
    ] {
        if let Some(asked) = asked
            && Some(asked) != own
            && !identity.is_admin
        {
            return Err(GatewayError::Forbidden(format!(
                "only admins (auth.admin_role) may read another {what}'s usage; drop ?{what}= to see your own"
            )));
        }
    }
    for d in [&q.from, &q.to].into_iter().flatten() {
        if d.parse::<jiff::civil::Date>().is_err() {
            return Err(GatewayError::BadRequest(format!(
                "{d:?} is not a date: use YYYY-MM-DD"
            )));
        }
    }
    let config = state.config.current();
    let others = [
        q.user.as_ref().filter(|u| **u != identity.user),
        q.team
            .as_ref()
            .filter(|t| Some(*t) != identity.team.as_ref()),
    ];
    if others.iter().any(Option::is_some) {
        crate::audit::admin_action(
            &state.store,
            state.clock.now(),
            "usage_read",
            &identity.user,
            json!({"user": q.user, "team": q.team, "from": q.from, "to": q.to}),
        );
    }
    let subject = crate::usage::Subject::resolve(&identity, q.user, q.team);
    let unreadable = |e: crate::state::StoreError| GatewayError::ServiceUnavailable {
        message: format!("the usage ledger cannot be read ({e}); retry shortly"),
        retry_after_secs: 5,
    };
    let mut report = crate::usage::collect(
        &config.settings,
        state.store.as_ref(),
        state.clock.now(),
        &subject,
        q.from,
        q.to,
    )
    .await
    .map_err(unreadable)?;
    let running = state.store.running().await.map_err(unreadable)?;
    crate::usage::add_running(&mut report, &config.settings, &subject, &running);
    if identity.is_admin {
        report.vidu_balance = state.balance.latest();
    }
    Ok(HttpResponse::Ok().json(report))
}

/// The caller's credits and concurrency, in Vidu's shape.
///
/// As Vidu answers it — but the caller's view: what they may spend (the tightest of their budgets) and run (the
/// running-task cap with the least room, and what runs in its scope), never the company's wallet. A Vidu client
/// that checks its credits before creating works unchanged.
#[utoipa::path(get, path = "/ent/v2/credits", tag = VIDU,
    responses(
        (status = 200, description = "The caller's view.", body = Credits),
        (status = 401, response = Error401), (status = 503, response = Error503),
    ))]
pub async fn credits(
    identity: Identity,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let config = state.config.current();
    let vidu_limit = state
        .balance
        .latest()
        .and_then(|b| b.concurrency_limit)
        .and_then(|l| u32::try_from(l).ok());
    let account = crate::usage::caller_account(
        &config.settings,
        state.store.as_ref(),
        state.clock.now(),
        &identity,
        vidu_limit,
    )
    .await
    .map_err(|e| GatewayError::ServiceUnavailable {
        message: format!("the gateway's state backend cannot be read ({e}); retry shortly"),
        retry_after_secs: 5,
    })?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(Credits {
            remains: [Remain {
                kind: "gateway",
                credit_remain: account.credit_remain,
                concurrency_limit: account.concurrency_limit,
                current_concurrency: account.current_concurrency,
                queue_count: 0,
            }],
        }))
}
