//! The gateway's own endpoints under `/gateway/v1`.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::auth::Identity;
use crate::http::app_state::AppState;
use crate::http::error::GatewayError;

/// `GET /gateway/v1/config` (admins): the effective configuration, secrets redacted, with its version.
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
    Ok(HttpResponse::Ok().json(json!({
        "version": config.version,
        "origin": config.origin.to_string(),
        "config": config.settings,
    })))
}

#[derive(serde::Deserialize)]
pub struct UsageQuery {
    user: Option<String>,
    team: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// `GET /gateway/v1/usage`: the caller's own user and team (admins: any, by `?user=` / `?team=`); current
/// budgets and per-day usage from the ledger.
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

/// `GET /ent/v2/credits`, as Vidu answers it — but the caller's view: what they may spend (the tightest of their
/// budgets) and run (the running-task cap with the least room, and what runs in its scope), never the company's
/// wallet. A Vidu client that checks its credits before creating works unchanged.
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
        &identity.user,
        identity.team.as_deref(),
        vidu_limit,
    )
    .await
    .map_err(|e| GatewayError::ServiceUnavailable {
        message: format!("the gateway's state backend cannot be read ({e}); retry shortly"),
        retry_after_secs: 5,
    })?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(json!({"remains": [{
            "type": "gateway",
            "credit_remain": account.credit_remain,
            "concurrency_limit": account.concurrency_limit,
            "current_concurrency": account.current_concurrency,
            "queue_count": 0,
        }]})))
}
