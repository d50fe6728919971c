//! The create flow behind `POST /ent/v2/img2video` and the quote: validate → policy → admission → forward →
//! settle. The upstream call and its settlement run as their own task, so a caller hanging up mid-request
//! neither leaks the in-flight slot nor loses the outcome (the task and its credits are still recorded).

use std::sync::Arc;

use actix_web::HttpResponse;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use bytes::Bytes;
use serde_json::Value;

use crate::auth::Identity;
use crate::config::Settings;
use crate::error::{GatewayError, UpstreamBody};
use crate::metrics::{AdmissionLabels, CreditLabels, Metrics, TeamLabels};
use crate::policy::admission::{Prepared, Verdict, prepare, refusal_error};
use crate::state::{AdmissionStore, Grant, LedgerEntry, Settlement, SlotSpec};
use crate::validate::{Reason, Validated, validate};
use crate::vidu::upstream::{Endpoint, Upstream, UpstreamError, UpstreamRequest, UpstreamResponse};

pub static X_CREDITS_ESTIMATED: HeaderName = HeaderName::from_static("x-credits-estimated");
pub static X_CREDITS_REMAINING: HeaderName = HeaderName::from_static("x-credits-remaining");
pub static X_OFF_PEAK_APPLIED: HeaderName = HeaderName::from_static("x-off-peak-applied");
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Everything the handler needs from the gateway's shared state.
pub struct Context<'a> {
    pub settings: &'a Settings,
    pub store: &'a Arc<dyn AdmissionStore>,
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

/// A validation rejection in the envelope.
pub fn rejection_error(r: crate::validate::Rejection) -> GatewayError {
    GatewayError::Validation(r)
}

/// An admitted request: what to send, and what was granted.
pub struct Admitted {
    pub body: Bytes,
    pub prepared: Prepared,
    pub grant: Grant,
}

/// A refused request, with the headers an admission-checked answer carries.
pub struct Refused {
    pub error: GatewayError,
    pub estimate: Option<u64>,
}

impl From<GatewayError> for Refused {
    fn from(error: GatewayError) -> Self {
        Self {
            error,
            estimate: None,
        }
    }
}

impl Refused {
    pub fn into_response(self) -> HttpResponse {
        let mut res = actix_web::ResponseError::error_response(&self.error);
        if let Some(e) = self.estimate
            && let Ok(v) = HeaderValue::from_str(&e.to_string())
        {
            res.headers_mut().insert(X_CREDITS_ESTIMATED.clone(), v);
        }
        res
    }
}

/// Steps 3–6: validate, apply policy, admit (reserving credits and taking slots). Refusals are recorded in the
/// ledger and the metrics with their reason.
pub fn admit(
    ctx: &Context<'_>,
    identity: &Identity,
    bytes: &Bytes,
    prefer_never: bool,
) -> Result<Admitted, Refused> {
    let team_label = team_label(identity);
    let result = admit_inner(ctx, identity, bytes, prefer_never);
    let (outcome, reason) = match &result {
        Ok(_) => ("admitted", "Admitted"),
        Err(r) => ("rejected", r.error.reason()),
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
            ctx.metrics
                .credits
                .get_or_create(&CreditLabels {
                    kind: "reserved",
                    team: team_label.clone(),
                })
                .inc_by(a.prepared.estimate());
            if let Some(left) = a.grant.team_remaining_credits {
                ctx.metrics
                    .budget_remaining
                    .get_or_create(&TeamLabels { team: team_label })
                    .set(i64::try_from(left).unwrap_or(i64::MAX));
            }
        }
        Err(r) => {
            let p = crate::policy::periods::periods(
                ctx.now,
                &crate::policy::periods::timezone(&ctx.settings.policy.timezone),
            );
            ctx.store.record_rejection(
                &LedgerEntry {
                    request_id: ctx.request_id.to_owned(),
                    user: identity.user.clone(),
                    team: identity.team.clone().unwrap_or_default(),
                    day: p.day,
                    month: p.month,
                    model: String::new(),
                    off_peak: false,
                },
                r.error.reason(),
            );
        }
    }
    result
}

fn admit_inner(
    ctx: &Context<'_>,
    identity: &Identity,
    bytes: &Bytes,
    prefer_never: bool,
) -> Result<Admitted, Refused> {
    let validated: Validated<'_> = validate(bytes, ctx.settings).map_err(rejection_error)?;
    let prepared = prepare(
        ctx.settings,
        identity,
        &validated.params,
        prefer_never,
        ctx.now,
        ctx.store.as_ref(),
        ctx.request_id,
    )?;
    let mut prepared = prepared;
    let grant = match ctx.store.admit(&prepared.request, false) {
        Ok(g) => g,
        Err(refusal) => {
            if let crate::state::Refusal::Unavailable(why) = &refusal
                && ctx.settings.state.on_unavailable == crate::config::OnUnavailable::FailOpen
            {
                tracing::error!(error = %why, "state backend unavailable: admitting without limits (fail_open)");
                // Nothing was taken, so there is nothing to give back.
                prepared.request.slots.clear();
                Grant {
                    reservation: None,
                    remaining_credits: None,
                    team_remaining_credits: None,
                    rate: None,
                }
            } else {
                return Err(Refused {
                    error: refusal_error(&refusal, prepared.estimate()),
                    estimate: Some(prepared.estimate()),
                });
            }
        }
    };
    let set: Vec<(&str, Value)> = if prepared.off_peak_applied.is_some() {
        vec![("off_peak", Value::Bool(true))]
    } else {
        Vec::new()
    };
    let body = validated.forward_body(bytes, &set);
    Ok(Admitted {
        body,
        prepared,
        grant,
    })
}

/// The quote: validation and policy as a create would see them, never forwarded, nothing taken.
pub fn quote(
    ctx: &Context<'_>,
    identity: &Identity,
    bytes: &Bytes,
    prefer_never: bool,
) -> Result<Value, GatewayError> {
    let validated = match validate(bytes, ctx.settings) {
        Ok(v) => v,
        Err(r) if r.reason == Reason::BadRequest => return Err(GatewayError::Validation(r)),
        Err(r) => {
            return Ok(serde_json::json!({
                "valid": false,
                "reason": r.reason,
                "message": r.message,
                "fields": r.fields,
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
        ctx.store.as_ref(),
        ctx.request_id,
    ) {
        Err(e) => Verdict::refused(&e, params.off_peak, estimate_now),
        Ok(prepared) => match ctx.store.admit(&prepared.request, true) {
            Ok(grant) => Verdict {
                admitted: true,
                reason: None,
                message: None,
                retry_after_secs: None,
                off_peak: prepared.off_peak(),
                off_peak_applied: prepared.off_peak_applied.clone(),
                estimated_credits: prepared.estimate(),
                remaining_credits: grant.remaining_credits,
            },
            Err(refusal) => {
                let mut v = Verdict::refused(
                    &refusal_error(&refusal, prepared.estimate()),
                    prepared.off_peak(),
                    prepared.estimate(),
                );
                v.off_peak_applied = prepared.off_peak_applied.clone();
                v
            }
        },
    };
    Ok(serde_json::json!({
        "valid": true,
        "effective": params,
        "image": validated.image,
        "stripped_fields": validated.stripped,
        "estimated_credits": {
            "now": verdict.estimated_credits,
            "immediate": params.estimate_with_off_peak(ctx.settings, false),
            "off_peak": params.estimate_with_off_peak(ctx.settings, true),
        },
        "policy": verdict,
    }))
}

/// Holds in-flight slots until dropped (success, Vidu error, timeout, hang-up, panic).
pub struct SlotGuard {
    store: Arc<dyn AdmissionStore>,
    slots: Vec<SlotSpec>,
    metrics: Arc<Metrics>,
    team: String,
}

impl SlotGuard {
    pub fn new(
        store: Arc<dyn AdmissionStore>,
        slots: Vec<SlotSpec>,
        metrics: Arc<Metrics>,
        team: String,
    ) -> Self {
        metrics
            .in_flight
            .get_or_create(&TeamLabels { team: team.clone() })
            .inc();
        Self {
            store,
            slots,
            metrics,
            team,
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.store.release_slots(&self.slots);
        self.metrics
            .in_flight
            .get_or_create(&TeamLabels {
                team: std::mem::take(&mut self.team),
            })
            .dec();
    }
}

/// Settles a reservation at most once; a reservation never settled explicitly (a panic) is kept as unknown.
struct ReservationGuard {
    store: Arc<dyn AdmissionStore>,
    reservation: Option<i64>,
    estimate: u64,
    metrics: Arc<Metrics>,
    team: String,
}

impl ReservationGuard {
    fn settle(mut self, s: Settlement) {
        self.finish(s);
    }

    fn finish(&mut self, s: Settlement) {
        let Some(id) = self.reservation.take() else {
            return;
        };
        let (kind, amount) = match &s {
            Settlement::Charged { credits, .. } => ("settled", *credits),
            Settlement::Released => ("released", self.estimate),
            Settlement::Unknown => ("unknown", self.estimate),
        };
        self.metrics
            .credits
            .get_or_create(&CreditLabels {
                kind,
                team: self.team.clone(),
            })
            .inc_by(amount);
        self.store.settle(id, s);
    }
}

impl Drop for ReservationGuard {
    fn drop(&mut self) {
        self.finish(Settlement::Unknown);
    }
}

/// What Vidu's answer means for the reservation.
pub fn settlement_of(
    result: &Result<UpstreamResponse, UpstreamError>,
    estimate: u64,
) -> Settlement {
    match result {
        Ok(r) if r.status.is_success() => {
            let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            Settlement::Charged {
                credits: v.get("credits").and_then(Value::as_u64).unwrap_or(estimate),
                task_id: v.get("task_id").and_then(|t| match t {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                }),
            }
        }
        // Vidu answered with an error: no task was created.
        Ok(_) => Settlement::Released,
        // Nothing was sent.
        Err(UpstreamError::Connect(_)) => Settlement::Released,
        // The task may exist.
        Err(UpstreamError::Timeout | UpstreamError::Broken(_)) => Settlement::Unknown,
    }
}

/// Step 7–8: forward the admitted request and settle. Runs detached from the caller's connection.
pub async fn forward_admitted(
    upstream: actix_web::web::Data<Upstream>,
    store: Arc<dyn AdmissionStore>,
    metrics: Arc<Metrics>,
    identity: &Identity,
    admitted: Admitted,
    request_id: String,
) -> Result<UpstreamResponse, UpstreamError> {
    let team = team_label(identity);
    let slots = SlotGuard::new(
        store.clone(),
        admitted.prepared.request.slots.clone(),
        metrics.clone(),
        team.clone(),
    );
    let reservation = ReservationGuard {
        store,
        reservation: admitted.grant.reservation,
        estimate: admitted.prepared.estimate(),
        metrics: metrics.clone(),
        team,
    };
    let estimate = admitted.prepared.estimate();
    let call = UpstreamRequest {
        endpoint: Endpoint::Img2Video,
        method: Method::POST,
        path: "/ent/v2/img2video".into(),
        body: admitted.body,
        request_id,
    };
    let task = actix_web::rt::spawn(async move {
        let result = upstream.send(call, &metrics).await;
        reservation.settle(settlement_of(&result, estimate));
        drop(slots);
        result
    });
    task.await.unwrap_or_else(|_| {
        Err(UpstreamError::Broken(
            "the upstream call was aborted".into(),
        ))
    })
}

/// The headers of an admission-checked answer (computed before forwarding, set on whatever comes back).
pub fn admission_headers(prepared: &Prepared, grant: &Grant) -> Vec<(HeaderName, HeaderValue)> {
    let mut h = Vec::with_capacity(5);
    let mut put = |name: &HeaderName, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.push((name.clone(), v));
        }
    };
    put(&X_CREDITS_ESTIMATED, prepared.estimate().to_string());
    if let Some(left) = grant.remaining_credits {
        put(&X_CREDITS_REMAINING, left.to_string());
    }
    if let Some(why) = &prepared.off_peak_applied {
        // Header values are visible ASCII: keep the reason readable, drop anything else.
        let ascii: String = why
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        put(&X_OFF_PEAK_APPLIED, ascii);
    }
    if let Some(r) = &grant.rate {
        put(
            &RATELIMIT_POLICY,
            format!("\"{}\";q={};w=60", r.scope, r.per_minute),
        );
        put(
            &RATELIMIT,
            format!("\"{}\";r={};t={}", r.scope, r.remaining, r.reset_secs),
        );
    }
    h
}

/// Vidu's answer as the caller's response.
pub fn upstream_response(answer: UpstreamResponse) -> HttpResponse {
    let status = StatusCode::from_u16(answer.status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut res = HttpResponse::build(status);
    if let Some(ct) = answer.content_type {
        res.insert_header((actix_web::http::header::CONTENT_TYPE, ct));
    }
    let mut res = res.body(answer.body);
    res.extensions_mut().insert(UpstreamBody);
    res
}

/// Team label for metrics (never user ids).
pub fn team_label(identity: &Identity) -> String {
    identity.team.clone().unwrap_or_else(|| "-".into())
}
