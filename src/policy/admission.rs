//! Admission, steps 4–6 of the request flow: access policy, off-peak decision, estimate, and one all-or-nothing
//! decision over every bucket (in-flight slots, then credit budgets, then rate limits — the first that refuses
//! names the answer; a refused request takes nothing).

use jiff::Timestamp;
use serde::Serialize;

use super::access::{FallbackState, OffPeak, RequestFacts, check_access, decide_off_peak};
use super::periods::{Periods, periods, timezone};
use super::resolve::{TeamLimits, UserRules, team_limits, user_rules};
use crate::auth::Identity;
use crate::config::{OffPeakMode, Settings};
use crate::error::{GatewayError, LimitReason};
use crate::state::*;
use crate::validate::Effective;

/// A request ready for the admission decision.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub request: AdmissionRequest,
    /// Why policy turned `off_peak` on (`X-Off-Peak-Applied`), if it did.
    pub off_peak_applied: Option<String>,
}

impl Prepared {
    /// The credits reserved for this request.
    pub fn estimate(&self) -> u64 {
        self.request.estimate
    }

    /// `off_peak` as it will be sent.
    pub fn off_peak(&self) -> bool {
        self.request.entry.off_peak
    }
}

/// Access rules, off-peak policy and the estimate; builds every bucket that applies.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    settings: &Settings,
    identity: &Identity,
    params: &Effective,
    prefer_never: bool,
    now: Timestamp,
    store: &dyn AdmissionStore,
    request_id: &str,
) -> Result<Prepared, GatewayError> {
    let rules = user_rules(settings, &identity.user, identity.team.as_deref());
    let team = team_limits(settings, identity.team.as_deref());
    let p = periods(now, &timezone(&settings.policy.timezone));
    let facts = RequestFacts {
        model: params.model.name(),
        spec: params.model.spec(),
        duration: params.duration,
        resolution: params.resolution,
        audio: params.audio,
        off_peak: params.off_peak,
        is_rec: params.is_rec,
    };
    check_access(&rules, &facts)?;

    let immediate_estimate = params.estimate_with_off_peak(settings, false);
    let immediate_key = BudgetKey {
        scope: Scope::User,
        subject: identity.user.clone(),
        period: Period::ImmediateDay,
        period_key: p.day.clone(),
    };
    let tracks_immediate = rules.off_peak.value == OffPeakMode::Fallback
        && rules.immediate_daily_credits.is_some()
        && !params.off_peak;
    let immediate_used = if tracks_immediate {
        store.used(&immediate_key).map_err(unavailable)?
    } else {
        0
    };
    let decision = decide_off_peak(
        &rules,
        &facts,
        prefer_never,
        FallbackState {
            immediate_used,
            immediate_estimate,
            minute_of_day: p.minute_of_day,
            secs_to_next_day: p.secs_to_next_day,
        },
    )?;
    let (off_peak, off_peak_applied) = match decision {
        OffPeak::AsSent => (params.off_peak, None),
        OffPeak::Applied(why) => (true, Some(why)),
    };
    let estimate = params.estimate_with_off_peak(settings, off_peak);

    let team_name = identity.team.clone().unwrap_or_default();
    let mut request = AdmissionRequest {
        rates: Vec::new(),
        slots: Vec::new(),
        budgets: Vec::new(),
        estimate,
        entry: LedgerEntry {
            request_id: request_id.to_owned(),
            user: identity.user.clone(),
            team: team_name.clone(),
            day: p.day.clone(),
            month: p.month.clone(),
            model: params.model.name().to_owned(),
            off_peak,
        },
    };
    buckets(settings, identity, &rules, &team, &p, &mut request);
    if tracks_immediate
        && !off_peak
        && let Some(cap) = &rules.immediate_daily_credits
    {
        request.budgets.push(BudgetSpec {
            key: immediate_key,
            limit: cap.value,
            secs_to_reset: p.secs_to_next_day,
            source: cap.key("immediate_daily_credits"),
        });
    }
    Ok(Prepared {
        request,
        off_peak_applied,
    })
}

fn buckets(
    settings: &Settings,
    identity: &Identity,
    rules: &UserRules,
    team: &TeamLimits,
    p: &Periods,
    req: &mut AdmissionRequest,
) {
    let user = identity.user.as_str();
    let team_name = identity.team.as_deref();
    let global = &settings.policy.global;
    let team_key = |k: &str| format!("policy.teams.{}.{k}", team_name.unwrap_or(""));

    // In-flight slots: user, team, global.
    if let Some(m) = &rules.max_in_flight {
        req.slots.push(SlotSpec {
            scope: Scope::User,
            subject: user.into(),
            max: m.value,
            source: m.key("max_in_flight"),
        });
    }
    if let (Some(m), Some(t)) = (team.max_in_flight, team_name) {
        req.slots.push(SlotSpec {
            scope: Scope::Team,
            subject: t.into(),
            max: m,
            source: team_key("team_max_in_flight"),
        });
    }
    if let Some(m) = global.max_in_flight {
        req.slots.push(SlotSpec {
            scope: Scope::Global,
            subject: String::new(),
            max: m,
            source: "policy.global.max_in_flight".into(),
        });
    }

    // Credit budgets: user, team, global; day and month.
    let mut budget =
        |scope: Scope, subject: &str, period: Period, limit: Option<u64>, source: String| {
            if let Some(limit) = limit {
                let (period_key, secs) = match period {
                    Period::Month => (p.month.clone(), p.secs_to_next_month),
                    _ => (p.day.clone(), p.secs_to_next_day),
                };
                req.budgets.push(BudgetSpec {
                    key: BudgetKey {
                        scope,
                        subject: subject.into(),
                        period,
                        period_key,
                    },
                    limit,
                    secs_to_reset: secs,
                    source,
                });
            }
        };
    if let Some(d) = &rules.daily_credits {
        budget(
            Scope::User,
            user,
            Period::Day,
            Some(d.value),
            d.key("daily_credits"),
        );
    }
    if let Some(m) = &rules.monthly_credits {
        budget(
            Scope::User,
            user,
            Period::Month,
            Some(m.value),
            m.key("monthly_credits"),
        );
    }
    if let Some(t) = team_name {
        budget(
            Scope::Team,
            t,
            Period::Day,
            team.daily_credits,
            team_key("team_daily_credits"),
        );
        budget(
            Scope::Team,
            t,
            Period::Month,
            team.monthly_credits,
            team_key("team_monthly_credits"),
        );
    }
    budget(
        Scope::Global,
        "",
        Period::Day,
        global.daily_credits,
        "policy.global.daily_credits".into(),
    );
    budget(
        Scope::Global,
        "",
        Period::Month,
        global.monthly_credits,
        "policy.global.monthly_credits".into(),
    );

    // Rates: user, team, global. An unset burst equals the per-minute rate. The source names both keys.
    if let Some(r) = &rules.requests_per_minute {
        let burst = rules.burst.as_ref().map_or(r.value, |b| b.value);
        req.rates.push(RateSpec {
            scope: Scope::User,
            subject: user.into(),
            per_minute: r.value,
            burst,
            source: rate_source(
                r.key("requests_per_minute"),
                rules.burst.as_ref().map(|b| b.key("burst")),
            ),
        });
    }
    if let (Some(r), Some(t)) = (team.requests_per_minute, team_name) {
        req.rates.push(RateSpec {
            scope: Scope::Team,
            subject: t.into(),
            per_minute: r,
            burst: team.burst.unwrap_or(r),
            source: rate_source(
                team_key("team_requests_per_minute"),
                team.burst.map(|_| team_key("team_burst")),
            ),
        });
    }
    if let Some(r) = global.requests_per_minute {
        req.rates.push(RateSpec {
            scope: Scope::Global,
            subject: String::new(),
            per_minute: r,
            burst: global.burst.unwrap_or(r),
            source: rate_source(
                "policy.global.requests_per_minute".into(),
                global.burst.map(|_| "policy.global.burst".into()),
            ),
        });
    }
}

/// The config keys of a rate limit: the per-minute figure's, and the burst's when one is set.
fn rate_source(per_minute: String, burst: Option<String>) -> String {
    match burst {
        Some(burst) => format!("{per_minute}, {burst}"),
        None => per_minute,
    }
}

fn unavailable(e: String) -> GatewayError {
    GatewayError::ServiceUnavailable {
        message: format!("the gateway's state backend is unavailable ({e}); retry shortly"),
        retry_after_secs: 5,
    }
}

/// The caller-facing error of a refusal.
pub fn refusal_error(r: &Refusal, estimate: u64) -> GatewayError {
    match r {
        Refusal::Concurrency { scope, max, source } => GatewayError::Limited {
            reason: LimitReason::ConcurrencyLimited,
            message: format!(
                "too many requests in flight: the {scope} limit is {max} at once ({source}); retry when one finishes"
            ),
            retry_after_secs: 1,
        },
        Refusal::Budget {
            key,
            limit,
            used,
            retry_after_secs,
            source,
        } => GatewayError::Limited {
            reason: LimitReason::CreditBudgetExhausted,
            message: format!(
                "the {} {} credit budget cannot cover this request: {used} of {limit} credits used, this request \
                 needs {estimate} ({source}); it resets in {}",
                key.scope,
                key.period.as_str(),
                human(*retry_after_secs)
            ),
            retry_after_secs: *retry_after_secs,
        },
        Refusal::Rate {
            scope,
            per_minute,
            burst,
            exhausted,
            retry_after_secs,
            source,
        } => GatewayError::Limited {
            reason: LimitReason::TooManyRequests,
            message: format!(
                "rate limit: the {scope} limit is {per_minute} requests per minute with a burst of {burst} \
                 ({source}): {}; retry in {retry_after_secs} s",
                match exhausted {
                    rate::Exhausted::Burst => format!("the burst of {burst} is used up"),
                    rate::Exhausted::PerMinute =>
                        format!("the rate of {per_minute} requests per minute is used up"),
                }
            ),
            retry_after_secs: *retry_after_secs,
        },
        Refusal::Unavailable(e) => unavailable(e.clone()),
    }
}

fn human(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// The quote's view of admission: what would happen now.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub admitted: bool,
    /// The reason a real request would get (`TooManyRequests`, `Forbidden`, …), when refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Seconds until it would fit, when waiting helps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    pub off_peak: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub off_peak_applied: Option<String>,
    pub estimated_credits: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining_credits: Option<u64>,
}

impl Verdict {
    pub fn refused(e: &GatewayError, off_peak: bool, estimate: u64) -> Self {
        let retry = match e {
            GatewayError::Limited {
                retry_after_secs, ..
            }
            | GatewayError::ServiceUnavailable {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        Self {
            admitted: false,
            reason: Some(e.reason()),
            message: Some(e.to_string()),
            retry_after_secs: retry,
            off_peak,
            off_peak_applied: None,
            estimated_credits: estimate,
            remaining_credits: None,
        }
    }
}
