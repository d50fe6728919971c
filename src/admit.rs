//! Admission, the phase between policy and forwarding: access rules, the off-peak decision and the estimate,
//! then the admission request the store decides on — every bucket that applies (in-flight slots, credit
//! budgets, rate limits) and the plan of how the request may run — and, once the store has decided, what its
//! decision means for the caller.
//!
//! The `fallback` off-peak rule depends on one fact only the store can give atomically: whether the user's
//! immediate budget still covers the immediate estimate. Policy is evaluated here for both answers (the hour
//! window, `Prefer: off-peak=never` and the model's off-peak ability are known now); the store answers, takes the
//! matching run, and says what the budget held, from which the answer's message is written.

use jiff::Timestamp;
use serde::Serialize;

use crate::auth::Identity;
use crate::config::{Enforce, OffPeakMode, Settings};
use crate::policy::access::{FallbackState, OffPeak, RequestFacts, check_access, decide_off_peak};
use crate::policy::denial::{Denial, LimitReason};
use crate::policy::periods::{Periods, periods};
use crate::policy::resolve::{TeamLimits, UserRules, team_limits, user_rules};
use crate::state::*;
use crate::validate::Effective;

/// A request ready for the admission decision.
pub struct Prepared<'a> {
    pub request: AdmissionRequest,
    off_peak: OffPeakPlan<'a>,
}

/// What policy knows of the off-peak outcome before the store decides.
enum OffPeakPlan<'a> {
    /// Settled: why policy turned `off_peak` on (`X-Off-Peak-Applied`), if it did.
    Fixed(Option<String>),
    /// The `fallback` rule: its reasons name what the immediate budget held.
    Fallback(Box<FallbackPolicy<'a>>),
}

struct FallbackPolicy<'a> {
    rules: UserRules,
    facts: RequestFacts<'a>,
    prefer_never: bool,
    immediate_estimate: u64,
    minute_of_day: u16,
    secs_to_next_day: u64,
}

impl FallbackPolicy<'_> {
    fn decide(&self, immediate_used: u64, immediate_estimate: u64) -> Result<OffPeak, Denial> {
        decide_off_peak(
            &self.rules,
            &self.facts,
            self.prefer_never,
            FallbackState {
                immediate_used,
                immediate_estimate,
                minute_of_day: self.minute_of_day,
                secs_to_next_day: self.secs_to_next_day,
            },
        )
    }
}

/// An admitted request (or, in a dry run, an admissible one).
#[derive(Debug)]
pub struct Decided {
    /// How it runs.
    pub run: Run,
    /// Why policy turned `off_peak` on (`X-Off-Peak-Applied`), if it did.
    pub off_peak_applied: Option<String>,
    pub granted: Granted,
}

/// A refused request.
#[derive(Debug)]
pub struct Refused {
    pub error: Denial,
    /// The run the store refused, with why policy turned `off_peak` on; `None` when policy refused first.
    pub run: Option<(Run, Option<String>)>,
    /// The rate limit that refused (its `RateLimit` headers say so), when a rate limit did.
    pub rate: Option<RateStatus>,
}

impl From<Denial> for Refused {
    fn from(error: Denial) -> Self {
        Self {
            error,
            run: None,
            rate: None,
        }
    }
}

/// Access rules, off-peak policy and the estimate; builds every bucket that applies.
pub fn prepare<'a>(
    settings: &'a Settings,
    identity: &Identity,
    params: &'a Effective,
    prefer_never: bool,
    now: Timestamp,
    request_id: &str,
) -> Result<Prepared<'a>, Denial> {
    let rules = user_rules(settings, &identity.user, identity.team.as_deref());
    let team = team_limits(settings, identity.team.as_deref());
    let p = periods(now, settings.policy.timezone.tz());
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
    let run = |off_peak: bool| Run {
        off_peak,
        estimate: params.estimate_with_off_peak(settings, off_peak),
    };
    let team_name = identity.team.clone().unwrap_or_default();
    let record = RequestRecord {
        request_id: request_id.to_owned(),
        user: identity.user.clone(),
        team: team_name,
        day: p.day.clone(),
        month: p.month.clone(),
        model: params.model.name().to_owned(),
    };
    let immediate_cap = rules
        .immediate_daily_credits
        .clone()
        .filter(|_| rules.off_peak.value == OffPeakMode::Fallback && !params.off_peak);
    let (plan, off_peak) = match immediate_cap {
        None => {
            let state = FallbackState {
                immediate_used: 0,
                immediate_estimate,
                minute_of_day: p.minute_of_day,
                secs_to_next_day: p.secs_to_next_day,
            };
            let (off_peak, applied) = match decide_off_peak(&rules, &facts, prefer_never, state)? {
                OffPeak::AsSent => (params.off_peak, None),
                OffPeak::Applied(why) => (true, Some(why)),
            };
            (Plan::Fixed(run(off_peak)), OffPeakPlan::Fixed(applied))
        }
        Some(cap) => {
            let policy = FallbackPolicy {
                rules: rules.clone(),
                facts,
                prefer_never,
                immediate_estimate,
                minute_of_day: p.minute_of_day,
                secs_to_next_day: p.secs_to_next_day,
            };
            // Policy for each answer of the store: a budget with nothing used and nothing to cover, and one
            // already over its limit.
            let run_for = |answer: Result<OffPeak, Denial>| match answer {
                Ok(OffPeak::AsSent) => Some(run(params.off_peak)),
                Ok(OffPeak::Applied(_)) => Some(run(true)),
                Err(_) => None,
            };
            let fallback = Fallback {
                immediate_budget: BudgetSpec {
                    key: BudgetKey {
                        scope: Scope::User,
                        subject: identity.user.clone(),
                        period: Period::ImmediateDay,
                        period_key: p.day.clone(),
                    },
                    limit: cap.value,
                    secs_to_reset: p.secs_to_next_day,
                    source: cap.key("immediate_daily_credits"),
                },
                immediate_estimate,
                if_covered: run_for(policy.decide(0, 0)),
                if_short: run_for(policy.decide(cap.value.saturating_add(1), 0)),
            };
            (
                Plan::Fallback(fallback),
                OffPeakPlan::Fallback(Box::new(policy)),
            )
        }
    };
    let mut request = AdmissionRequest {
        record,
        plan,
        rates: Vec::new(),
        slots: Vec::new(),
        running: running_spec(settings, identity, &rules, &team),
        shadow: shadow_scopes(settings, &rules, &team),
        budgets: Vec::new(),
    };
    buckets(settings, identity, &rules, &team, &p, &mut request);
    Ok(Prepared { request, off_peak })
}

impl Prepared<'_> {
    /// The run a request is expected to take before the store has answered (the estimate an answer names when
    /// the store cannot decide).
    pub fn expected_run(&self) -> Option<Run> {
        match &self.request.plan {
            Plan::Fixed(run) => Some(*run),
            Plan::Fallback(f) => f.if_covered.or(f.if_short),
        }
    }

    /// What the store's decision means for the caller.
    pub fn conclude(&self, decision: Decision) -> Result<Decided, Refused> {
        let applied = match &self.off_peak {
            OffPeakPlan::Fixed(applied) => Ok(applied.clone()),
            OffPeakPlan::Fallback(policy) => policy
                .decide(
                    decision.immediate_used.unwrap_or(0),
                    policy.immediate_estimate,
                )
                .map(|o| match o {
                    OffPeak::AsSent => None,
                    OffPeak::Applied(why) => Some(why),
                }),
        };
        let Some(run) = decision.run else {
            // Policy refused for the budget's answer: its error says what the budget held.
            return Err(Refused::from(applied.err().unwrap_or_else(|| {
                Denial::Internal(anyhow::anyhow!(
                    "the store found no run where the off-peak policy allows one"
                ))
            })));
        };
        let off_peak_applied = applied.unwrap_or_else(|e| {
            tracing::error!(error = %e, "the store chose a run the off-peak policy refuses");
            None
        });
        match decision.outcome {
            Ok(granted) => Ok(Decided {
                run,
                off_peak_applied,
                granted,
            }),
            Err(refusal) => Err(Refused {
                error: refusal_error(&refusal, run.estimate),
                run: Some((run, off_peak_applied)),
                rate: refused_rate(&refusal),
            }),
        }
    }
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
            max: m.value.get(),
            source: m.key("max_in_flight"),
        });
    }
    if let (Some(m), Some(t)) = (team.max_in_flight, team_name) {
        req.slots.push(SlotSpec {
            scope: Scope::Team,
            subject: t.into(),
            max: m.get(),
            source: team_key("team_max_in_flight"),
        });
    }
    if let Some(m) = global.max_in_flight {
        req.slots.push(SlotSpec {
            scope: Scope::Global,
            subject: String::new(),
            max: m.get(),
            source: "policy.global.max_in_flight".into(),
        });
    }

    // Credit budgets: user, team, global; day and month (a fallback plan adds the immediate budget).
    req.budgets = budget_specs(settings, identity, rules, team, p);

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

/// The credit budgets that apply to `identity`: user, team, global; day and month (those with a limit).
pub fn budget_specs(
    settings: &Settings,
    identity: &Identity,
    rules: &UserRules,
    team: &TeamLimits,
    p: &Periods,
) -> Vec<BudgetSpec> {
    let mut budgets = Vec::with_capacity(6);
    let mut budget =
        |scope: Scope, subject: &str, period: Period, limit: Option<u64>, source: String| {
            if let Some(limit) = limit {
                let (period_key, secs) = match period {
                    Period::Month => (p.month.clone(), p.secs_to_next_month),
                    _ => (p.day.clone(), p.secs_to_next_day),
                };
                budgets.push(BudgetSpec {
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
    let user = identity.user.as_str();
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
    if let Some(t) = identity.team.as_deref() {
        let team_key = |k: &str| format!("policy.teams.{t}.{k}");
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
    let global = &settings.policy.global;
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
    budgets
}

/// Which scopes' limits only observe (`enforce = "shadow"`): per-user limits by the user's rules (user > team >
/// defaults), the team's aggregate limits by its team table (else the defaults), the global ones by
/// `[policy.global]`.
pub fn shadow_scopes(settings: &Settings, rules: &UserRules, team: &TeamLimits) -> Shadow {
    Shadow {
        user: rules.enforce.value == Enforce::Shadow,
        team: team.enforce == Enforce::Shadow,
        global: settings.policy.global.enforce == Some(Enforce::Shadow),
    }
}

/// Running-task slots: the user's and team's caps, and the global one with every share group's guarantee.
pub fn running_spec(
    settings: &Settings,
    identity: &Identity,
    rules: &UserRules,
    team: &TeamLimits,
) -> RunningSpec {
    let tasks = &settings.tasks;
    let mut limits = Vec::new();
    if let Some(m) = &rules.max_running_tasks {
        limits.push(SlotSpec {
            scope: Scope::User,
            subject: identity.user.clone(),
            max: m.value.get(),
            source: m.key("max_running_tasks"),
        });
    }
    if let (Some(m), Some(t)) = (team.max_running_tasks, identity.team.as_deref()) {
        limits.push(SlotSpec {
            scope: Scope::Team,
            subject: t.into(),
            max: m.get(),
            source: format!("policy.teams.{t}.team_max_running_tasks"),
        });
    }
    let share = crate::policy::share::share_spec(settings, identity.team.as_deref());
    RunningSpec {
        ttl_ms: tasks.running_slot_ttl_secs.saturating_mul(1000),
        offpeak_holds: tasks.offpeak_holds_slot,
        limits,
        share,
    }
}

/// The config keys of a rate limit: the per-minute figure's, and the burst's when one is set.
fn rate_source(per_minute: String, burst: Option<String>) -> String {
    match burst {
        Some(burst) => format!("{per_minute}, {burst}"),
        None => per_minute,
    }
}

/// The caller-facing error of an admission the store could not decide.
pub fn unavailable(e: &StoreError) -> Denial {
    Denial::Unavailable {
        message: format!("the gateway's state backend is unavailable ({e}); retry shortly"),
        retry_after_secs: 5,
    }
}

/// The caller-facing error of a refusal.
/// The rate limit that refused, as the `RateLimit` headers describe it: nothing left, back after `Retry-After`.
fn refused_rate(r: &Refusal) -> Option<RateStatus> {
    match r {
        Refusal::Rate {
            scope,
            per_minute,
            burst,
            retry_after_secs,
            ..
        } => Some(RateStatus {
            scope: *scope,
            per_minute: *per_minute,
            burst: *burst,
            remaining: 0,
            reset_secs: *retry_after_secs,
        }),
        _ => None,
    }
}

pub fn refusal_error(r: &Refusal, estimate: u64) -> Denial {
    match r {
        // `Prepared::conclude` answers with the off-peak policy's own error.
        Refusal::NoRun => Denial::Internal(anyhow::anyhow!(
            "a fallback plan without a run reached the refusal message"
        )),
        Refusal::Concurrency { scope, max, source } => Denial::Limited {
            reason: LimitReason::ConcurrencyLimited,
            message: format!(
                "too many requests in flight: the {scope} limit is {max} at once ({source}); retry when one finishes"
            ),
            retry_after_secs: 1,
        },
        Refusal::Running {
            scope,
            subject,
            max,
            running,
            source,
            share,
        } => Denial::Limited {
            reason: LimitReason::RunningTasksLimited,
            message: running_message(*scope, subject, *max, *running, source, share.as_ref()),
            retry_after_secs: RUNNING_RETRY_AFTER_SECS,
        },
        Refusal::Budget {
            key,
            limit,
            used,
            retry_after_secs,
            source,
        } => Denial::Limited {
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
        } => Denial::Limited {
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
    }
}

/// `Retry-After` of a `RunningTasksLimited`: a slot frees when some task ends, which nobody can predict; tasks
/// take minutes, so asking again every 10 s is often enough and not wasteful.
pub const RUNNING_RETRY_AFTER_SECS: u64 = 10;

fn running_message(
    scope: Scope,
    subject: &str,
    max: u32,
    running: u32,
    source: &str,
    share: Option<&ShareRefusal>,
) -> String {
    let retry = "a slot frees when a task ends (success, failure or cancel); retry then";
    let tasks = |n: u32| {
        if n == 1 {
            "1 task".to_owned()
        } else {
            format!("{n} tasks")
        }
    };
    match (scope, share) {
        (Scope::User, _) => format!(
            "running-task limit: you have {} running, the most your limit allows ({max}, {source}); {retry}",
            tasks(running)
        ),
        (Scope::Team, _) => format!(
            "running-task limit: team {subject} has {} running, the most its limit allows ({max}, {source}); \
             {retry}",
            tasks(running)
        ),
        (Scope::Global, None) => format!(
            "running-task limit: all {max} running-task slots of the enterprise key are in use ({source}); {retry}"
        ),
        (Scope::Global, Some(s)) => format!(
            "running-task fair share: {} {} running, at or over {} guarantee of {} ({}); the {} free \
             slot(s) of the {max} ({source}) are kept for other teams under their guarantee ({} owed); {retry}",
            match &s.group {
                ShareGroup::Team(t) => format!("team {t} has"),
                ShareGroup::Pool => "the teams not listed under [policy.teams] have".into(),
            },
            tasks(s.running),
            match &s.group {
                ShareGroup::Team(_) => "its",
                ShareGroup::Pool => "their",
            },
            s.guarantee,
            s.guarantee_source,
            s.free,
            s.owed,
        ),
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
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
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
    /// What limits under `enforce = "shadow"` would refuse (a real request is admitted all the same).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadow_refusals: Vec<ShadowRefusal>,
}

/// A refusal a shadow limit would make, as the caller would see it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ShadowRefusal {
    pub reason: &'static str,
    pub message: String,
}

impl ShadowRefusal {
    /// The shadow refusals of an admitted request.
    pub fn of(decided: &Decided) -> Vec<Self> {
        decided
            .granted
            .shadowed
            .iter()
            .map(|r| {
                let e = refusal_error(r, decided.run.estimate);
                ShadowRefusal {
                    reason: e.reason(),
                    message: e.to_string(),
                }
            })
            .collect()
    }
}

impl Verdict {
    pub fn refused(e: &Denial, off_peak: bool, estimate: u64) -> Self {
        Self {
            admitted: false,
            reason: Some(e.reason()),
            message: Some(e.to_string()),
            retry_after_secs: e.retry_after_secs(),
            off_peak,
            off_peak_applied: None,
            estimated_credits: estimate,
            remaining_credits: None,
            shadow_refusals: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_settings;
    use crate::validate::validate;

    fn alice() -> Identity {
        Identity {
            user: "alice".into(),
            team: Some("t".into()),
            roles: Vec::new(),
            is_admin: false,
        }
    }

    fn params<'a>(s: &'a Settings, body: &'a str) -> Effective<'a> {
        match validate(body.as_bytes(), s) {
            Ok(v) => v.params,
            Err(r) => panic!("{}", r.message),
        }
    }

    /// 10:00 in Shanghai (the default policy time zone), 14 h before its midnight.
    fn morning() -> Timestamp {
        "2026-11-25T02:00:00Z".parse().unwrap()
    }

    const Q2: &str =
        r#"{"model": "viduq2", "images": ["https://example.com/a.png"], "duration": 5}"#;
    const Q3_AUDIO: &str = r#"{"model": "viduq3-pro", "images": ["https://example.com/a.png"]}"#;

    fn fallback_plan(p: &Prepared<'_>) -> Fallback {
        match &p.request.plan {
            Plan::Fallback(f) => f.clone(),
            Plan::Fixed(run) => panic!("a fixed plan: {run:?}"),
        }
    }

    const NOW_55: Run = Run {
        off_peak: false,
        estimate: 55,
    };
    const OFF_PEAK_28: Run = Run {
        off_peak: true,
        estimate: 28,
    };

    #[test]
    fn every_bucket_that_applies_names_its_config_key() {
        let s = test_settings(
            "[policy.defaults]\nrequests_per_minute = 5\nmax_in_flight = 2\ndaily_credits = 100\n\
             [policy.teams.t]\nteam_monthly_credits = 900\nteam_burst = 4\nteam_requests_per_minute = 4\n\
             [policy.global]\nmax_in_flight = 50\ndaily_credits = 10000\n",
        );
        let params = params(&s, Q2);
        let p = prepare(&s, &alice(), &params, false, morning(), "r-1").unwrap();
        let r = &p.request;
        assert!(matches!(r.plan, Plan::Fixed(NOW_55)));
        assert_eq!(
            (
                r.record.user.as_str(),
                r.record.team.as_str(),
                r.record.day.as_str()
            ),
            ("alice", "t", "2026-11-25")
        );
        let sources = |v: Vec<&String>| v.into_iter().cloned().collect::<Vec<_>>();
        assert_eq!(
            sources(r.slots.iter().map(|s| &s.source).collect()),
            [
                "policy.defaults.max_in_flight",
                "policy.global.max_in_flight"
            ]
        );
        assert_eq!(
            sources(r.budgets.iter().map(|b| &b.source).collect()),
            [
                "policy.defaults.daily_credits",
                "policy.teams.t.team_monthly_credits",
                "policy.global.daily_credits"
            ]
        );
        assert_eq!(
            sources(r.rates.iter().map(|r| &r.source).collect()),
            [
                "policy.defaults.requests_per_minute",
                "policy.teams.t.team_requests_per_minute, policy.teams.t.team_burst"
            ]
        );
    }

    #[test]
    fn fallback_offers_the_immediate_run_and_the_off_peak_one() {
        let s = test_settings(
            "[policy.defaults]\noff_peak = \"fallback\"\nimmediate_daily_credits = 100\n",
        );
        let params = params(&s, Q2);
        let p = prepare(&s, &alice(), &params, false, morning(), "r").unwrap();
        let f = fallback_plan(&p);
        assert_eq!(
            (f.if_covered, f.if_short),
            (Some(NOW_55), Some(OFF_PEAK_28))
        );
        assert_eq!((f.immediate_estimate, f.immediate_budget.limit), (55, 100));
        assert_eq!(f.immediate_budget.key.period, Period::ImmediateDay);
        // `Prefer: off-peak=never`: nothing to run when the budget is short.
        let p = prepare(&s, &alice(), &params, true, morning(), "r").unwrap();
        assert_eq!(fallback_plan(&p).if_short, None);
        // Audio the model cannot run off-peak: the same.
        let q3 = self::params(&s, Q3_AUDIO);
        let p = prepare(&s, &alice(), &q3, false, morning(), "r").unwrap();
        assert!(fallback_plan(&p).if_covered.is_some());
        assert_eq!(fallback_plan(&p).if_short, None);
        // Sent off-peak already: nothing to decide.
        let off_body = Q2.replace("\"duration\"", "\"off_peak\": true, \"duration\"");
        let off: Effective = self::params(&s, &off_body);
        let p = prepare(&s, &alice(), &off, false, morning(), "r").unwrap();
        assert!(matches!(p.request.plan, Plan::Fixed(OFF_PEAK_28)));
    }

    #[test]
    fn outside_the_immediate_hours_both_answers_run_off_peak() {
        let s = test_settings(
            "[policy.defaults]\noff_peak = \"fallback\"\nimmediate_daily_credits = 100\n\
             immediate_hours = [\"12:00-13:00\"]\n",
        );
        let params = params(&s, Q2);
        let p = prepare(&s, &alice(), &params, false, morning(), "r").unwrap();
        let f = fallback_plan(&p);
        assert_eq!(
            (f.if_covered, f.if_short),
            (Some(OFF_PEAK_28), Some(OFF_PEAK_28))
        );
    }

    fn decision(
        run: Option<Run>,
        immediate_used: u64,
        outcome: Result<Granted, Refusal>,
    ) -> Decision {
        Decision {
            run,
            immediate_used: Some(immediate_used),
            outcome,
        }
    }

    fn granted() -> Granted {
        Granted {
            grant: None,
            remaining_credits: Some(10),
            team_remaining_credits: None,
            rate: None,
            shadowed: Vec::new(),
        }
    }

    #[test]
    fn the_decision_names_what_the_immediate_budget_held() {
        let s = test_settings(
            "[policy.defaults]\noff_peak = \"fallback\"\nimmediate_daily_credits = 100\n",
        );
        let params = params(&s, Q2);
        let p = prepare(&s, &alice(), &params, false, morning(), "r").unwrap();
        let d = p
            .conclude(decision(Some(NOW_55), 45, Ok(granted())))
            .unwrap();
        assert_eq!((d.run, d.off_peak_applied), (NOW_55, None));
        let d = p
            .conclude(decision(Some(OFF_PEAK_28), 46, Ok(granted())))
            .unwrap();
        assert_eq!(d.run, OFF_PEAK_28);
        assert_eq!(
            d.off_peak_applied.as_deref(),
            Some(
                "immediate budget used up (46 of 100 credits today, \
                 policy.defaults.immediate_daily_credits)"
            )
        );
        // A refusal of the off-peak run keeps the reason it ran off-peak, and its estimate.
        let refusal = Refusal::Concurrency {
            scope: Scope::User,
            max: 1,
            source: "policy.defaults.max_in_flight".into(),
        };
        let r = p
            .conclude(decision(Some(OFF_PEAK_28), 46, Err(refusal)))
            .unwrap_err();
        assert_eq!(r.error.reason(), "ConcurrencyLimited");
        let (run, applied) = r.run.unwrap();
        assert_eq!(run, OFF_PEAK_28);
        assert!(applied.unwrap().contains("46 of 100"));
    }

    #[test]
    fn no_run_is_the_policy_refusal_for_what_the_budget_held() {
        let s = test_settings(
            "[policy.defaults]\noff_peak = \"fallback\"\nimmediate_daily_credits = 100\n",
        );
        let params = params(&s, Q2);
        let p = prepare(&s, &alice(), &params, true, morning(), "r").unwrap();
        let r = p
            .conclude(decision(None, 60, Err(Refusal::NoRun)))
            .unwrap_err();
        assert!(r.run.is_none());
        match r.error {
            Denial::Limited {
                reason,
                message,
                retry_after_secs,
            } => {
                assert_eq!(reason, LimitReason::OffPeakRequired);
                assert!(message.contains("60 of 100 credits today"), "{message}");
                assert_eq!(retry_after_secs, 14 * 3600, "until midnight in Shanghai");
            }
            other => panic!("{other:?}"),
        }
        let q3 = self::params(&s, Q3_AUDIO);
        let p = prepare(&s, &alice(), &q3, false, morning(), "r").unwrap();
        let r = p
            .conclude(decision(None, 100, Err(Refusal::NoRun)))
            .unwrap_err();
        assert_eq!(r.error.reason(), "PolicyConflict");
    }
}
