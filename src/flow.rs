//! The create flow behind `POST /ent/v2/img2video` and the quote: validate → policy → admit → forward →
//! settle. The upstream call and its settlement run as their own task, so a caller hanging up mid-request
//! neither leaks the in-flight slot nor loses the outcome (the task and its credits are still recorded).

use std::sync::Arc;

use actix_web::http::Method;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::admit::{Decided, Refused, ShadowRefusal, Verdict, prepare, unavailable};
use crate::auth::Identity;
use crate::callbacks::hosts::check_callback_url;
use crate::config::Settings;
use crate::config::{OffPeakMode, UnknownFields};
use crate::forward::rewrite::streamed_growth;
use crate::forward::stream::Outgoing;
use crate::forward::upstream::{
    Endpoint, Upstream, UpstreamError, UpstreamRequest, UpstreamResponse,
};
use crate::idempotency::Keeper;
use crate::metrics::{AdmissionLabels, CreditLabels, Metrics, TeamLabels};
use crate::settle::{Pending, settlement_of};
use crate::state::{Grant, Mode, RejectionRecord, Store};
use crate::validate::image::ImageInfo;
use crate::validate::scan::{Holds, Scanned};
use crate::validate::{
    Effective, FieldReason, FieldViolation, Reason, Rejection, Validated, validate,
    validate_scanned,
};

/// Everything the handler needs from the gateway's shared state.
pub struct Context<'a> {
    pub settings: &'a Settings,
    pub store: &'a Arc<dyn Store>,
    pub metrics: &'a Arc<Metrics>,
    pub now: jiff::Timestamp,
    pub request_id: &'a str,
}

/// Whether the caller sent `Prefer: off-peak=never`.
pub fn prefers_never_off_peak(prefer: Option<&str>) -> bool {
    prefer.is_some_and(|v| {
        v.split([',', ';'])
            .any(|p| p.trim().eq_ignore_ascii_case("off-peak=never"))
    })
}

/// Why a create was not forwarded.
#[derive(Debug)]
pub enum NotAdmitted {
    /// The body breaks Vidu's rules or the catalog.
    Invalid(Rejection),
    /// Policy or the store refused it.
    Refused(Refused),
}

impl NotAdmitted {
    /// The reason the caller sees, for metrics and the rejection record.
    pub fn reason(&self) -> &'static str {
        match self {
            NotAdmitted::Invalid(r) => r.reason.as_str(),
            NotAdmitted::Refused(r) => r.error.reason(),
        }
    }
}

impl From<Refused> for NotAdmitted {
    fn from(r: Refused) -> Self {
        NotAdmitted::Refused(r)
    }
}

/// An admitted request: what to send, and what was granted.
pub struct Admitted {
    pub body: Bytes,
    pub decided: Decided,
    /// The caller's `callback_url` when the gateway relays task states to it.
    pub relay_to: Option<String>,
    /// A create forwarded while it was read: its request to Vidu, waiting for `body` (the rest of the body).
    pub outgoing: Option<Outgoing>,
}

/// A create's body as the flow sees it.
#[derive(Clone, Copy)]
pub enum Body<'a> {
    /// Read whole: forwarded whole (rewritten when the gateway changes a field).
    Whole(&'a Bytes),
    /// Read while it was forwarded (`forward::stream`): what is left to send is the rest of the body after its
    /// `images` value, in exactly `room` bytes.
    Streamed { scanned: &'a Scanned, room: usize },
}

/// Validate, apply policy, admit (reserving credits and taking slots). Refusals are recorded in the ledger and
/// the metrics with their reason.
pub async fn admit(
    ctx: &Context<'_>,
    identity: &Identity,
    body: Body<'_>,
    prefer_never: bool,
) -> Result<Admitted, NotAdmitted> {
    let team_label = team_label(identity);
    let result = admit_inner(ctx, identity, body, prefer_never).await;
    let (outcome, reason) = match &result {
        Ok(_) => ("admitted", "Admitted"),
        Err(r) => ("rejected", r.reason()),
    };
    ctx.metrics
        .admissions
        .get_or_create(&AdmissionLabels {
            outcome,
            reason,
            team: team_label.clone(),
        })
        .inc();
    match &result {
        Ok(a) => {
            // Limits under `enforce = "shadow"` that would have refused: counted and logged, not enforced.
            for shadow in ShadowRefusal::of(&a.decided) {
                ctx.metrics
                    .admissions
                    .get_or_create(&AdmissionLabels {
                        outcome: "shadow_rejected",
                        reason: shadow.reason,
                        team: team_label.clone(),
                    })
                    .inc();
                tracing::warn!(
                    target: "shadow",
                    reason = shadow.reason,
                    team = %team_label,
                    refusal = %shadow.message,
                    "a limit under enforce = \"shadow\" would have refused this request; it was admitted"
                );
            }
            ctx.metrics
                .credits
                .get_or_create(&CreditLabels {
                    kind: "reserved",
                    team: team_label.clone(),
                })
                .inc_by(a.decided.run.estimate);
            if let Some(left) = a.decided.granted.team_remaining_credits {
                ctx.metrics
                    .budget_remaining
                    .get_or_create(&TeamLabels { team: team_label })
                    .set(i64::try_from(left).unwrap_or(i64::MAX));
            }
        }
        Err(r) => {
            let p = crate::policy::periods::periods(ctx.now, ctx.settings.policy.timezone.tz());
            let rejection = RejectionRecord {
                user: identity.user.clone(),
                team: identity.team.clone().unwrap_or_default(),
                day: p.day,
                reason: r.reason().to_owned(),
            };
            // A record, not a decision: the refusal is answered without waiting for it (a state backend that
            // is slow or down must not hold the answer a second time).
            let store = ctx.store.clone();
            actix_web::rt::spawn(async move {
                if let Err(e) = store.record_rejection(rejection).await {
                    tracing::error!(error = %e, "the state backend could not record a rejection");
                }
            });
        }
    }
    result
}

async fn admit_inner(
    ctx: &Context<'_>,
    identity: &Identity,
    body: Body<'_>,
    prefer_never: bool,
) -> Result<Admitted, NotAdmitted> {
    let validated: Validated<'_> = match body {
        Body::Whole(bytes) => validate(bytes, ctx.settings),
        Body::Streamed { scanned, .. } => validate_scanned(scanned, ctx.settings),
    }
    .map_err(NotAdmitted::Invalid)?;
    let relay_to =
        relay_target(ctx.settings, identity, &validated).map_err(NotAdmitted::Invalid)?;
    let prepared = prepare(
        ctx.settings,
        identity,
        &validated.params,
        prefer_never,
        ctx.now,
        ctx.request_id,
    )
    .map_err(Refused::from)?;
    let decision = ctx
        .store
        .admit(&prepared.request, Mode::Take)
        .await
        .map_err(|e| Refused {
            error: unavailable(&e),
            run: prepared.expected_run().map(|run| (run, None)),
            rate: None,
        })?;
    let decided = prepared.conclude(decision)?;
    let (set, remove) = changes(
        ctx.settings,
        decided.off_peak_applied.is_some(),
        validated.params.callback_url.is_some(),
    );
    let body = match body {
        Body::Whole(bytes) => validated.forward_body_without(bytes, &set, remove),
        Body::Streamed { scanned, room } => validated
            .streamed_tail(&set, remove, scanned.images_end, room)
            .unwrap_or_else(|| {
                // Cannot happen (`streaming` bounds it); the request is then stopped, never sent wrong.
                tracing::error!(
                    request_id = %ctx.request_id,
                    room,
                    "the end of a streamed body does not fit its declared length; the request is stopped"
                );
                Bytes::new()
            }),
    };
    Ok(Admitted {
        body,
        decided,
        relay_to,
        outgoing: None,
    })
}

/// The fields the gateway changes in a forwarded create: `off_peak` when policy moved it off-peak, and, with
/// relaying on, `callback_url` (the gateway's own, or removed: Vidu calls the gateway or nobody, never the
/// caller's URL).
fn changes(
    settings: &Settings,
    off_peak_applied: bool,
    has_callback: bool,
) -> (Vec<(&'static str, Value)>, &'static [&'static str]) {
    let callbacks = &settings.callbacks;
    let mut set: Vec<(&str, Value)> = Vec::with_capacity(2);
    if off_peak_applied {
        set.push(("off_peak", Value::Bool(true)));
    }
    let mut remove: &[&str] = &[];
    if callbacks.relaying() {
        match callbacks.own_url() {
            Some(own) => set.push(("callback_url", Value::String(own))),
            None if has_callback => remove = &["callback_url"],
            None => {}
        }
    }
    (set, remove)
}

/// What a streamed create needs from the configuration: how many bytes more than the caller's body it may take
/// (every field the gateway may set, added: `forward::rewrite::streamed_growth`; nothing unless callbacks are
/// relayed or a policy moves creates off-peak, so that an unchanged body goes out with exactly its own length),
/// and the members that keep it from streaming when they come before `images` (the fields the gateway may change:
/// they cannot go out before the checks decide).
pub fn streaming(settings: &Settings) -> (usize, Holds) {
    let off_peak = may_move_off_peak(settings);
    let holds = Holds {
        callback_url: settings.callbacks.relaying(),
        off_peak,
        unknown: settings.validation.unknown_fields == UnknownFields::Strip,
    };
    (streamed_growth(&changes(settings, off_peak, true).0), holds)
}

/// Whether any policy table moves creates off-peak (`force`, `fallback`): `off_peak` may then be set.
fn may_move_off_peak(settings: &Settings) -> bool {
    let p = &settings.policy;
    let moves =
        |m: Option<OffPeakMode>| matches!(m, Some(OffPeakMode::Force | OffPeakMode::Fallback));
    moves(p.defaults.off_peak)
        || p.teams.values().any(|t| moves(t.off_peak))
        || p.users.values().any(|u| moves(u.off_peak))
}

/// The caller's `callback_url` when the gateway relays to it (relaying on), checked against `callbacks.relay_hosts`
/// and the team's relay secret: a URL the gateway may not call is the caller's mistake, refused before anything is
/// taken.
fn relay_target(
    settings: &Settings,
    identity: &Identity,
    validated: &Validated<'_>,
) -> Result<Option<String>, Rejection> {
    let callbacks = &settings.callbacks;
    match &validated.params.callback_url {
        Some(url) if callbacks.relaying() => {
            let team = identity.team.as_deref().unwrap_or("");
            check_callback_url(callbacks, team, url).map_err(|message| {
                Rejection::field("callback_url", FieldReason::NotAllowed, message)
            })?;
            Ok(Some(url.clone()))
        }
        _ => Ok(None),
    }
}

/// The quote's answer: a body validation refuses, or the request as it would run and what policy and admission
/// would say now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Quote<'a> {
    Invalid(InvalidQuote),
    Valid(Box<ValidQuote<'a>>),
}

/// A body validation refuses: what a create would answer in its envelope.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InvalidQuote {
    /// Always `false`.
    pub valid: bool,
    pub reason: Reason,
    pub message: String,
    pub fields: Vec<FieldViolation>,
}

/// A valid body: the request as Vidu would run it, and what would happen to it now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ValidQuote<'a> {
    /// Always `true`.
    pub valid: bool,
    pub effective: Effective<'a>,
    pub image: ImageInfo,
    /// Unknown fields that would be removed before forwarding (`validation.unknown_fields = "strip"`).
    pub stripped_fields: Vec<String>,
    pub estimated_credits: Estimates,
    pub policy: Verdict,
}

/// The credit estimate of the request as it would run, and of either run.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = CreditEstimates)]
pub struct Estimates {
    /// As it would run now (after the off-peak policy).
    pub now: u64,
    /// Run at once.
    pub immediate: u64,
    /// Run off-peak.
    pub off_peak: u64,
}

/// The quote: validation and policy as a create would see them, never forwarded, nothing taken. Only a body
/// that is not a JSON object at all is an error; every other verdict is the answer.
pub async fn quote<'a>(
    ctx: &Context<'a>,
    identity: &Identity,
    bytes: &'a Bytes,
    prefer_never: bool,
) -> Result<Quote<'a>, Rejection> {
    let validated = match validate(bytes, ctx.settings).and_then(|v| {
        relay_target(ctx.settings, identity, &v)?;
        Ok(v)
    }) {
        Ok(v) => v,
        Err(r) if r.reason == Reason::BadRequest => return Err(r),
        Err(r) => {
            return Ok(Quote::Invalid(InvalidQuote {
                valid: false,
                reason: r.reason,
                message: r.message,
                fields: r.fields,
            }));
        }
    };
    let params = &validated.params;
    let estimate_now = params.estimate_with_off_peak(ctx.settings, params.off_peak);
    let verdict = match prepare(
        ctx.settings,
        identity,
        params,
        prefer_never,
        ctx.now,
        ctx.request_id,
    ) {
        Err(e) => Verdict::refused(&e, params.off_peak, estimate_now),
        Ok(prepared) => match ctx.store.admit(&prepared.request, Mode::DryRun).await {
            Err(e) => {
                let run = prepared.expected_run();
                Verdict::refused(
                    &unavailable(&e),
                    run.map_or(params.off_peak, |r| r.off_peak),
                    run.map_or(estimate_now, |r| r.estimate),
                )
            }
            Ok(decision) => match prepared.conclude(decision) {
                Ok(d) => Verdict {
                    shadow_refusals: ShadowRefusal::of(&d),
                    admitted: true,
                    reason: None,
                    message: None,
                    retry_after_secs: None,
                    off_peak: d.run.off_peak,
                    off_peak_applied: d.off_peak_applied,
                    estimated_credits: d.run.estimate,
                    remaining_credits: d.granted.remaining_credits,
                },
                Err(refused) => match refused.run {
                    None => Verdict::refused(&refused.error, params.off_peak, estimate_now),
                    Some((run, applied)) => {
                        let mut v = Verdict::refused(&refused.error, run.off_peak, run.estimate);
                        v.off_peak_applied = applied;
                        v
                    }
                },
            },
        },
    };
    let estimated_credits = Estimates {
        now: verdict.estimated_credits,
        immediate: params.estimate_with_off_peak(ctx.settings, false),
        off_peak: params.estimate_with_off_peak(ctx.settings, true),
    };
    Ok(Quote::Valid(Box::new(ValidQuote {
        valid: true,
        effective: validated.params,
        image: validated.image,
        stripped_fields: validated.stripped,
        estimated_credits,
        policy: verdict,
    })))
}

/// Forward the admitted request and settle. Runs detached from the caller's connection; the caller has the answer
/// as soon as Vidu gives it (and its `Idempotency-Key` answer is stored, when `keeper` holds one), the settlement
/// follows without holding it up.
pub async fn forward_admitted(
    upstream: Arc<Upstream>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    identity: &Identity,
    admitted: Admitted,
    request_id: String,
    keeper: Option<Keeper>,
) -> Result<UpstreamResponse, UpstreamError> {
    let admitted_outgoing = admitted.outgoing;
    let estimate = admitted.decided.run.estimate;
    let relay_to = admitted.relay_to;
    let grant = admitted
        .decided
        .granted
        .grant
        .unwrap_or_else(Grant::unaccounted);
    let pending = Pending::new(
        store,
        grant,
        estimate,
        metrics.clone(),
        team_label(identity),
    );
    let call = UpstreamRequest {
        endpoint: Endpoint::Img2Video,
        method: Method::POST,
        path: "/ent/v2/img2video".into(),
        body: admitted.body,
        request_id,
    };
    let (answer, answered) = tokio::sync::oneshot::channel();
    actix_web::rt::spawn(async move {
        let result = match admitted_outgoing {
            // The caller's body is already on its way: its last part releases it.
            Some(outgoing) => outgoing.finish(call.body).await,
            None => upstream.send(call, &metrics).await,
        };
        let settlement = settlement_of(&result, estimate, relay_to);
        // Stored before the caller has the answer (a retry then finds it), here rather than in the handler: a
        // caller who hangs up must not leave the key to be forwarded again once its claim lapses.
        if let Some(keeper) = keeper {
            keeper.answered(&result).await;
        }
        // The caller gets Vidu's answer now; the settlement is issued in this same poll (before the caller's
        // response is even written, so a later request on this replica is ordered after it) but not waited for:
        // one round trip to the store on the request path, the admission.
        let _ = answer.send(result);
        pending.finish(settlement).await;
    });
    answered.await.unwrap_or_else(|_| {
        Err(UpstreamError::Broken(
            "the upstream call was aborted".into(),
        ))
    })
}

/// Team label for metrics (never user ids).
pub fn team_label(identity: &Identity) -> String {
    identity.team.clone().unwrap_or_else(|| "-".into())
}
