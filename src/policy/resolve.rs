//! The effective policy of a request: `[policy.users."<user>"]` over `[policy.teams.<team>]` over
//! `[policy.defaults]`, key by key, each value remembering which table set it (for messages that name it).

use std::fmt;
use std::num::NonZeroU32;

use crate::config::{Enforce, HourWindow, OffPeakMode, Settings, TeamPolicy, UserPolicy};

/// Which table a rule came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    User(String),
    Team(String),
    Defaults,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::User(u) => write!(f, "policy.users.{u:?}"),
            Source::Team(t) => write!(f, "policy.teams.{t}"),
            Source::Defaults => f.write_str("policy.defaults"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
}

impl<T> Sourced<T> {
    /// `policy.teams.marketing.max_duration`
    pub fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.source)
    }
}

/// Per-user rules in force for one identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRules {
    pub requests_per_minute: Option<Sourced<NonZeroU32>>,
    pub burst: Option<Sourced<NonZeroU32>>,
    pub max_in_flight: Option<Sourced<NonZeroU32>>,
    pub daily_credits: Option<Sourced<u64>>,
    pub monthly_credits: Option<Sourced<u64>>,
    pub models: Option<Sourced<Vec<String>>>,
    pub max_duration: Option<Sourced<u32>>,
    pub max_resolution: Option<Sourced<String>>,
    pub allow_recommended_prompt: Option<Sourced<bool>>,
    pub off_peak: Sourced<OffPeakMode>,
    pub immediate_daily_credits: Option<Sourced<u64>>,
    pub immediate_hours: Option<Sourced<Vec<HourWindow>>>,
    pub max_running_tasks: Option<Sourced<NonZeroU32>>,
    /// Whether the per-user limits refuse or only observe (`enforce`: user > team > defaults).
    pub enforce: Sourced<Enforce>,
}

/// Team-wide aggregate limits (`team_*` keys).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TeamLimits {
    pub requests_per_minute: Option<NonZeroU32>,
    pub burst: Option<NonZeroU32>,
    pub max_in_flight: Option<NonZeroU32>,
    pub daily_credits: Option<u64>,
    pub monthly_credits: Option<u64>,
    pub max_running_tasks: Option<NonZeroU32>,
    /// Whether the team's aggregate limits refuse or only observe (the team table's `enforce`, else the
    /// defaults').
    pub enforce: Enforce,
}

pub fn user_rules(settings: &Settings, user: &str, team: Option<&str>) -> UserRules {
    let pol = &settings.policy;
    let team_policy: Option<(&TeamPolicy, &str)> =
        team.and_then(|t| pol.teams.get(t).map(|p| (p, t)));
    let user_policy = pol.users.get(user);

    macro_rules! pick {
        ($field:ident) => {{
            let from_user = user_policy
                .and_then(|p: &UserPolicy| p.$field.clone())
                .map(|value| Sourced {
                    value,
                    source: Source::User(user.to_owned()),
                });
            from_user
                .or_else(|| {
                    team_policy.and_then(|(p, t)| {
                        p.$field.clone().map(|value| Sourced {
                            value,
                            source: Source::Team(t.to_owned()),
                        })
                    })
                })
                .or_else(|| {
                    pol.defaults.$field.clone().map(|value| Sourced {
                        value,
                        source: Source::Defaults,
                    })
                })
        }};
    }

    UserRules {
        requests_per_minute: pick!(requests_per_minute),
        burst: pick!(burst),
        max_in_flight: pick!(max_in_flight),
        daily_credits: pick!(daily_credits),
        monthly_credits: pick!(monthly_credits),
        models: pick!(models),
        max_duration: pick!(max_duration),
        max_resolution: pick!(max_resolution),
        allow_recommended_prompt: pick!(allow_recommended_prompt),
        off_peak: pick!(off_peak).unwrap_or(Sourced {
            value: OffPeakMode::Allow,
            source: Source::Defaults,
        }),
        // 0 and [] are how a table says "no immediate cap" and "no hour windows" over one that sets them.
        immediate_daily_credits: pick!(immediate_daily_credits).filter(|s| s.value > 0),
        immediate_hours: pick!(immediate_hours).filter(|s| !s.value.is_empty()),
        max_running_tasks: pick!(max_running_tasks),
        enforce: pick!(enforce).unwrap_or(Sourced {
            value: Enforce::On,
            source: Source::Defaults,
        }),
    }
}

pub fn team_limits(settings: &Settings, team: Option<&str>) -> TeamLimits {
    let defaults = settings.policy.defaults.enforce.unwrap_or_default();
    let Some(t) = team.and_then(|t| settings.policy.teams.get(t)) else {
        return TeamLimits {
            enforce: defaults,
            ..TeamLimits::default()
        };
    };
    TeamLimits {
        requests_per_minute: t.team_requests_per_minute,
        burst: t.team_burst,
        max_in_flight: t.team_max_in_flight,
        daily_credits: t.team_daily_credits,
        monthly_credits: t.team_monthly_credits,
        max_running_tasks: t.team_max_running_tasks,
        enforce: t.enforce.unwrap_or(defaults),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_settings as settings;

    #[test]
    fn user_over_team_over_defaults_key_by_key() {
        let s = settings(
            "[policy.defaults]\nrequests_per_minute = 10\ndaily_credits = 100\nmax_duration = 8\n\
             [policy.teams.mkt]\ndaily_credits = 500\noff_peak = \"fallback\"\nteam_daily_credits = 9000\n\
             [policy.users.\"bob\"]\ndaily_credits = 50\n",
        );
        let r = user_rules(&s, "bob", Some("mkt"));
        assert_eq!(r.daily_credits.as_ref().unwrap().value, 50);
        assert_eq!(r.requests_per_minute.as_ref().unwrap().value.get(), 10);
        assert_eq!(
            r.daily_credits.unwrap().key("daily_credits"),
            "policy.users.\"bob\".daily_credits"
        );
        assert_eq!(r.off_peak.value, OffPeakMode::Fallback);
        assert_eq!(r.off_peak.source, Source::Team("mkt".into()));
        assert_eq!(r.requests_per_minute.unwrap().source, Source::Defaults);
        assert_eq!(r.max_duration.unwrap().value, 8);
        let alice = user_rules(&s, "alice", Some("mkt"));
        assert_eq!(alice.daily_credits.unwrap().value, 500);
        let other = user_rules(&s, "carol", Some("sales"));
        assert_eq!(other.daily_credits.unwrap().value, 100);
        assert_eq!(other.off_peak.value, OffPeakMode::Allow);
        assert_eq!(team_limits(&s, Some("mkt")).daily_credits, Some(9000));
        assert_eq!(team_limits(&s, Some("sales")), TeamLimits::default());
    }

    #[test]
    fn unset_everywhere_means_unlimited() {
        let r = user_rules(&settings(""), "u", None);
        assert!(r.requests_per_minute.is_none() && r.daily_credits.is_none() && r.models.is_none());
        assert_eq!(r.off_peak.value, OffPeakMode::Allow);
    }
}
