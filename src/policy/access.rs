//! Access rules and off-peak policy: decided before any counter moves. Refusals name the rule and the table
//! that set it; a forced `off_peak` is applied only when the model can run it (never by changing `audio`).

use crate::catalog::{ModelSpec, resolution_rank};
use crate::config::{HourWindow, OffPeakMode};
use crate::policy::denial::{Denial, LimitReason};
use crate::policy::resolve::UserRules;

/// What the policy looks at in a (validated, defaults-applied) request.
#[derive(Clone, Debug)]
pub struct RequestFacts<'a> {
    pub model: &'a str,
    pub spec: &'a ModelSpec,
    pub duration: u32,
    pub resolution: &'a str,
    pub audio: bool,
    pub off_peak: bool,
    pub is_rec: bool,
}

/// 403 unless the model, duration, resolution and recommended-prompt use are allowed for this user.
pub fn check_access(rules: &UserRules, req: &RequestFacts<'_>) -> Result<(), Denial> {
    if let Some(models) = &rules.models
        && !models.value.iter().any(|m| m == req.model)
    {
        return Err(Denial::Forbidden(format!(
            "model {} is not allowed for you ({} = [{}]): use one of those",
            req.model,
            models.key("models"),
            models.value.join(", ")
        )));
    }
    if let Some(max) = &rules.max_duration
        && req.duration > max.value
    {
        return Err(Denial::Forbidden(format!(
            "duration {} s is over your limit ({} = {}): send \"duration\" of at most {}",
            req.duration,
            max.key("max_duration"),
            max.value,
            max.value
        )));
    }
    if let Some(max) = &rules.max_resolution
        && resolution_rank(req.resolution) > resolution_rank(&max.value)
    {
        return Err(Denial::Forbidden(format!(
            "resolution {} is over your limit ({} = {:?}): send \"resolution\" of at most {}",
            req.resolution,
            max.key("max_resolution"),
            max.value,
            max.value
        )));
    }
    if req.is_rec
        && let Some(allow) = &rules.allow_recommended_prompt
        && !allow.value
    {
        return Err(Denial::Forbidden(format!(
            "recommended prompts are not allowed for you ({} = false): send \"is_rec\": false",
            allow.key("allow_recommended_prompt")
        )));
    }
    Ok(())
}

/// The off-peak outcome for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffPeak {
    /// Forward as the caller sent it.
    AsSent,
    /// Set `off_peak: true`; the reason goes to `X-Off-Peak-Applied`.
    Applied(String),
}

/// What `fallback` needs to know about the immediate budget and the clock.
#[derive(Clone, Copy, Debug)]
pub struct FallbackState {
    /// Immediate credits already used (or reserved) today by this user.
    pub immediate_used: u64,
    /// The estimate of this request if sent immediately.
    pub immediate_estimate: u64,
    pub minute_of_day: u16,
    pub secs_to_next_day: u64,
}

/// `policy.*.off_peak`: `allow` passes the caller's choice, `force` runs every request off-peak, `forbid` refuses
/// `off_peak: true`, `fallback` runs immediately while inside `immediate_hours` and the immediate budget, else
/// off-peak; `Prefer: off-peak=never` turns a conversion into a refusal; audio a model cannot run off-peak is a
/// conflict, never silently dropped.
pub fn decide_off_peak(
    rules: &UserRules,
    req: &RequestFacts<'_>,
    prefer_never: bool,
    state: FallbackState,
) -> Result<OffPeak, Denial> {
    let mode = &rules.off_peak;
    match mode.value {
        OffPeakMode::Allow => Ok(OffPeak::AsSent),
        OffPeakMode::Forbid if req.off_peak => Err(Denial::Forbidden(format!(
            "off-peak requests are not allowed for you ({} = \"forbid\"): send \"off_peak\": false",
            mode.key("off_peak")
        ))),
        OffPeakMode::Forbid => Ok(OffPeak::AsSent),
        OffPeakMode::Force if req.off_peak => Ok(OffPeak::AsSent),
        OffPeakMode::Force => {
            if prefer_never {
                return Err(Denial::Forbidden(format!(
                    "immediate generation is never allowed for you ({} = \"force\"); drop \
                     \"Prefer: off-peak=never\" to have the request run off-peak",
                    mode.key("off_peak")
                )));
            }
            convert(req, format!("forced by {}", mode.key("off_peak")))
        }
        OffPeakMode::Fallback if req.off_peak => Ok(OffPeak::AsSent),
        OffPeakMode::Fallback => {
            let mut reasons = Vec::new();
            let mut wait: Option<u64> = None;
            if let Some(hours) = &rules.immediate_hours
                && !hours.value.iter().any(|w| w.contains(state.minute_of_day))
            {
                let windows: Vec<String> = hours.value.iter().map(ToString::to_string).collect();
                reasons.push(format!(
                    "outside immediate hours {} ({})",
                    windows.join(", "),
                    hours.key("immediate_hours")
                ));
                wait = Some(secs_until_window(&hours.value, state.minute_of_day));
            }
            if let Some(cap) = &rules.immediate_daily_credits
                && state.immediate_used + state.immediate_estimate > cap.value
            {
                reasons.push(format!(
                    "immediate budget used up ({} of {} credits today, {})",
                    state.immediate_used,
                    cap.value,
                    cap.key("immediate_daily_credits")
                ));
                wait = Some(wait.unwrap_or(0).max(state.secs_to_next_day));
            }
            if reasons.is_empty() {
                return Ok(OffPeak::AsSent);
            }
            let why = reasons.join("; ");
            if prefer_never {
                return Err(Denial::Limited {
                    reason: LimitReason::OffPeakRequired,
                    message: format!(
                        "an immediate request is not possible now ({why}); retry later, or drop \
                         \"Prefer: off-peak=never\" to run it off-peak"
                    ),
                    retry_after_secs: wait.unwrap_or(60),
                });
            }
            convert(req, why)
        }
    }
}

fn convert(req: &RequestFacts<'_>, why: String) -> Result<OffPeak, Denial> {
    if req.audio && !req.spec.off_peak_with_audio {
        return Err(Denial::PolicyConflict(format!(
            "this request must run off-peak ({why}), but {} cannot run off-peak with audio: send \
             \"audio\": false",
            req.model
        )));
    }
    Ok(OffPeak::Applied(why))
}

/// Seconds from `minute` until the next window opens.
fn secs_until_window(windows: &[HourWindow], minute: u16) -> u64 {
    (1..=1440u16)
        .find(|d| windows.iter().any(|w| w.contains((minute + d) % 1440)))
        .map(|d| u64::from(d) * 60)
        .unwrap_or(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, test_settings as settings};
    use crate::policy::resolve::user_rules;

    fn facts<'a>(s: &'a Settings, model: &'a str, audio: bool, off_peak: bool) -> RequestFacts<'a> {
        RequestFacts {
            model,
            spec: &s.models[model],
            duration: 5,
            resolution: "720p",
            audio,
            off_peak,
            is_rec: false,
        }
    }

    fn state(used: u64, minute: u16) -> FallbackState {
        FallbackState {
            immediate_used: used,
            immediate_estimate: 50,
            minute_of_day: minute,
            secs_to_next_day: 3600,
        }
    }

    #[test]
    fn access_refusals_name_the_rule_and_its_table() {
        let s = settings(
            "[policy.defaults]\nmodels = [\"viduq2\"]\n[policy.teams.t]\nmax_duration = 4\nmax_resolution = \"720p\"\n",
        );
        let r = user_rules(&s, "u", Some("t"));
        let e = check_access(&r, &facts(&s, "viduq1", false, false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("policy.defaults.models"), "{e}");
        let e = check_access(&r, &facts(&s, "viduq2", false, false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("policy.teams.t.max_duration = 4"), "{e}");
        let mut f = facts(&s, "viduq2", false, false);
        f.duration = 4;
        f.resolution = "1080p";
        let e = check_access(&r, &f).unwrap_err().to_string();
        assert!(e.contains("max_resolution"), "{e}");
        f.resolution = "540p";
        assert!(check_access(&r, &f).is_ok());
    }

    #[test]
    fn force_converts_or_conflicts_with_audio() {
        let s = settings("[policy.defaults]\noff_peak = \"force\"\n");
        let r = user_rules(&s, "u", None);
        let out =
            decide_off_peak(&r, &facts(&s, "viduq2", false, false), false, state(0, 0)).unwrap();
        assert!(
            matches!(out, OffPeak::Applied(ref why) if why.contains("policy.defaults.off_peak"))
        );
        let e = decide_off_peak(
            &r,
            &facts(&s, "viduq3-pro", true, false),
            false,
            state(0, 0),
        )
        .unwrap_err();
        assert_eq!(e.reason(), "PolicyConflict");
        assert!(e.to_string().contains("\"audio\": false"));
        let e =
            decide_off_peak(&r, &facts(&s, "viduq2", false, false), true, state(0, 0)).unwrap_err();
        assert_eq!(e.reason(), "Forbidden");
    }

    #[test]
    fn forbid_refuses_off_peak() {
        let s = settings("[policy.defaults]\noff_peak = \"forbid\"\n");
        let r = user_rules(&s, "u", None);
        assert_eq!(
            decide_off_peak(&r, &facts(&s, "viduq2", false, false), false, state(0, 0)).unwrap(),
            OffPeak::AsSent
        );
        let e =
            decide_off_peak(&r, &facts(&s, "viduq2", false, true), false, state(0, 0)).unwrap_err();
        assert_eq!(e.reason(), "Forbidden");
    }

    #[test]
    fn fallback_by_budget_and_by_hours() {
        let s = settings(
            "[policy.defaults]\noff_peak = \"fallback\"\nimmediate_daily_credits = 100\nimmediate_hours = [\"09:00-19:00\"]\n",
        );
        let r = user_rules(&s, "u", None);
        let f = facts(&s, "viduq2", false, false);
        assert_eq!(
            decide_off_peak(&r, &f, false, state(50, 10 * 60)).unwrap(),
            OffPeak::AsSent,
            "50 + 50 fits 100"
        );
        let out = decide_off_peak(&r, &f, false, state(51, 10 * 60)).unwrap();
        assert!(
            matches!(out, OffPeak::Applied(ref w) if w.contains("immediate budget")),
            "{out:?}"
        );
        let out = decide_off_peak(&r, &f, false, state(0, 20 * 60)).unwrap();
        assert!(
            matches!(out, OffPeak::Applied(ref w) if w.contains("outside immediate hours")),
            "{out:?}"
        );
        // Prefer: off-peak=never → 429 with the time until the window opens (20:00 → 09:00 = 13 h).
        let e = decide_off_peak(&r, &f, true, state(0, 20 * 60)).unwrap_err();
        match e {
            Denial::Limited {
                reason,
                retry_after_secs,
                ..
            } => {
                assert_eq!(reason, LimitReason::OffPeakRequired);
                assert_eq!(retry_after_secs, 13 * 3600);
            }
            other => panic!("{other:?}"),
        }
    }
}
