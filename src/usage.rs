//! Usage reports: current budgets (limit, used, remaining) and per-day admitted/rejected requests and credits —
//! from the running store for `GET /gateway/v1/usage`, from the ledger file for `vidu-gateway usage`.

use futures_util::FutureExt as _;
use jiff::Timestamp;
use serde::Serialize;

use crate::auth::Identity;
use crate::config::Settings;
use crate::policy::periods::periods;
use crate::policy::resolve::{team_limits, user_rules};
use crate::state::{
    BudgetKey, BudgetSpec, Period, Reports, RunningNow, Scope, ShareGroup, StoreError, UsageFilter,
    UsageRow,
};

/// Whose usage: a user, a team, or both (a caller's own view).
#[derive(Clone, Debug, Default)]
pub struct Subject {
    pub user: Option<String>,
    pub team: Option<String>,
}

impl Subject {
    /// Admins name whom they want; everyone else gets their own user and team.
    pub fn resolve(identity: &Identity, user: Option<String>, team: Option<String>) -> Self {
        if user.is_none() && team.is_none() {
            return Self {
                user: Some(identity.user.clone()),
                team: identity.team.clone(),
            };
        }
        Self { user, team }
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(as = UsageBudget)]
pub struct Budget {
    pub scope: &'static str,
    pub period: &'static str,
    pub period_key: String,
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    pub source: String,
}

#[derive(Clone, Debug, Serialize, Default, utoipa::ToSchema)]
#[schema(as = UsageTotals)]
pub struct Totals {
    pub admitted: u64,
    pub rejected: u64,
    pub credits_reserved: u64,
    pub credits_settled: u64,
    pub credits_released: u64,
    pub credits_unknown: u64,
    /// Credits given back for tasks that failed or were cancelled (`credits_settled` is what is still charged).
    pub credits_refunded: u64,
    pub off_peak_requests: u64,
    /// Share of admitted requests that ran off-peak (0..=1).
    pub off_peak_share: f64,
}

/// Tasks created and not yet ended (holding a running-task slot), against the cap of the section's scope.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RunningTasks {
    pub running: u32,
    /// The cap (`max_running_tasks`, `team_max_running_tasks`, `policy.global.max_running_tasks`); none: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A listed team's fair-share guarantee of the global cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guarantee: Option<u32>,
    /// A team not listed under `[policy.teams]`: the guarantee of the pool it shares with every such team.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_guarantee: Option<u32>,
    /// Everyone: running tasks per team.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub teams: std::collections::BTreeMap<String, u32>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(as = UsageSection)]
pub struct Section {
    pub name: String,
    /// Only where the state backend reports them (the gateway's API, the `usage` command on Redis).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running_tasks: Option<RunningTasks>,
    pub budgets: Vec<Budget>,
    pub totals: Totals,
    pub days: Vec<UsageRow>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(as = UsageReport)]
pub struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Section>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<Section>,
    /// Everyone (the enterprise key as a whole): when neither a user nor a team is named (CLI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all: Option<Section>,
    /// The Vidu account as the balance watch last read it, with the burn rate and runway (admins only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vidu_balance: Option<crate::balance::Balance>,
}

pub fn totals(days: &[UsageRow]) -> Totals {
    let mut t = Totals::default();
    for d in days {
        t.admitted += d.admitted;
        t.rejected += d.rejected;
        t.credits_reserved += d.credits_reserved;
        t.credits_settled += d.credits_settled;
        t.credits_released += d.credits_released;
        t.credits_unknown += d.credits_unknown;
        t.credits_refunded += d.credits_refunded;
        t.off_peak_requests += d.off_peak_requests;
    }
    if t.admitted > 0 {
        t.off_peak_share = t.off_peak_requests as f64 / t.admitted as f64;
    }
    t
}

/// One budget of a section, before its use is read.
struct Line {
    key: BudgetKey,
    limit: u64,
    source: String,
}

fn line(
    scope: Scope,
    subject: &str,
    period: Period,
    period_key: &str,
    limit: Option<u64>,
    source: String,
) -> Option<Line> {
    Some(Line {
        key: BudgetKey {
            scope,
            subject: subject.to_owned(),
            period,
            period_key: period_key.to_owned(),
        },
        limit: limit?,
        source,
    })
}

/// A section's budgets (one read for all of them) and days.
async fn section(
    source: &dyn Reports,
    name: &str,
    lines: Vec<Line>,
    filter: UsageFilter,
) -> Result<Section, StoreError> {
    let keys: Vec<BudgetKey> = lines.iter().map(|l| l.key.clone()).collect();
    let used = source.used(&keys).await?;
    let days = source.usage(&filter).await?;
    let budgets = lines
        .into_iter()
        .zip(used)
        .map(|(l, used)| Budget {
            scope: l.key.scope.as_str(),
            period: l.key.period.as_str(),
            period_key: l.key.period_key,
            limit: l.limit,
            used,
            remaining: l.limit.saturating_sub(used),
            source: l.source,
        })
        .collect();
    Ok(Section {
        name: name.to_owned(),
        running_tasks: None,
        budgets,
        totals: totals(&days),
        days,
    })
}

/// The report for `subject`: its current budgets and usage per day between `from` and `to` (inclusive).
pub async fn collect(
    settings: &Settings,
    source: &dyn Reports,
    now: Timestamp,
    subject: &Subject,
    from: Option<String>,
    to: Option<String>,
) -> Result<Report, StoreError> {
    let p = periods(now, settings.policy.timezone.tz());
    let filter = |user: Option<&String>, team: Option<&String>| UsageFilter {
        user: user.cloned(),
        team: team.cloned(),
        from: from.clone(),
        to: to.clone(),
    };
    let user = match &subject.user {
        None => None,
        Some(u) => {
            let rules = user_rules(settings, u, subject.team.as_deref());
            let lines = [
                (
                    Period::Day,
                    &p.day,
                    rules.daily_credits.as_ref(),
                    "daily_credits",
                ),
                (
                    Period::Month,
                    &p.month,
                    rules.monthly_credits.as_ref(),
                    "monthly_credits",
                ),
                (
                    Period::ImmediateDay,
                    &p.day,
                    rules.immediate_daily_credits.as_ref(),
                    "immediate_daily_credits",
                ),
            ]
            .into_iter()
            .filter_map(|(period, key, limit, name)| {
                let limit = limit?;
                line(
                    Scope::User,
                    u,
                    period,
                    key,
                    Some(limit.value),
                    limit.key(name),
                )
            })
            .collect();
            Some(section(source, u, lines, filter(Some(u), None)).await?)
        }
    };
    let team = match &subject.team {
        None => None,
        Some(t) => {
            let limits = team_limits(settings, Some(t));
            let lines = [
                line(
                    Scope::Team,
                    t,
                    Period::Day,
                    &p.day,
                    limits.daily_credits,
                    format!("policy.teams.{t}.team_daily_credits"),
                ),
                line(
                    Scope::Team,
                    t,
                    Period::Month,
                    &p.month,
                    limits.monthly_credits,
                    format!("policy.teams.{t}.team_monthly_credits"),
                ),
            ]
            .into_iter()
            .flatten()
            .collect();
            Some(section(source, t, lines, filter(None, Some(t))).await?)
        }
    };
    let all = if subject.user.is_none() && subject.team.is_none() {
        let g = &settings.policy.global;
        let lines = [
            line(
                Scope::Global,
                "",
                Period::Day,
                &p.day,
                g.daily_credits,
                "policy.global.daily_credits".into(),
            ),
            line(
                Scope::Global,
                "",
                Period::Month,
                &p.month,
                g.monthly_credits,
                "policy.global.monthly_credits".into(),
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        Some(section(source, "all", lines, filter(None, None)).await?)
    } else {
        None
    };
    Ok(Report {
        user,
        team,
        all,
        vidu_balance: None,
    })
}

/// `credit_remain` for a caller no budget applies to: unlimited, as the largest integer every JSON client reads
/// exactly (2^53 − 1) — never the company's balance.
pub const UNLIMITED_CREDITS: u64 = (1 << 53) - 1;

/// `concurrency_limit` for a caller no running-task cap applies to, before the balance watch has read Vidu's own:
/// Vidu's default per organisation.
pub const VIDU_DEFAULT_CONCURRENCY: u32 = 5;

/// What `GET /ent/v2/credits` answers a caller: what *they* may spend and run, in Vidu's shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallerAccount {
    /// The tightest remaining of the caller's budgets (user, team, global; day and month).
    pub credit_remain: u64,
    /// The running-task cap with the least room left (user, team or global), and what runs in its scope.
    pub concurrency_limit: u32,
    pub current_concurrency: u32,
}

/// The caller's own view of the account: the tightest remaining budget, and the running-task cap with the least
/// room (or, with no cap, `fallback_limit`: Vidu's own, as last read) with the tasks running in its scope.
pub async fn caller_account(
    settings: &Settings,
    store: &dyn crate::state::Store,
    now: Timestamp,
    identity: &Identity,
    fallback_limit: Option<u32>,
) -> Result<CallerAccount, StoreError> {
    let (user, team) = (identity.user.as_str(), identity.team.as_deref());
    let rules = user_rules(settings, user, team);
    let limits = team_limits(settings, team);
    // The limits admission applies to this caller, but those under `enforce = "shadow"`: they refuse nobody, so
    // they are not what the caller may spend or run.
    let shadow = crate::admit::shadow_scopes(settings, &rules, &limits);
    let p = periods(now, settings.policy.timezone.tz());
    let budgets: Vec<BudgetSpec> =
        crate::admit::budget_specs(settings, identity, &rules, &limits, &p)
            .into_iter()
            .filter(|b| !shadow.of(b.key.scope))
            .collect();
    let keys: Vec<BudgetKey> = budgets.iter().map(|b| b.key.clone()).collect();
    let used = store.used(&keys).await?;
    let credit_remain = budgets
        .iter()
        .zip(used)
        .map(|(b, used)| b.limit.saturating_sub(used))
        .min()
        .unwrap_or(UNLIMITED_CREDITS);
    let running = store.running().await?;
    let spec = crate::admit::running_spec(settings, identity, &rules, &limits);
    let running_in = |scope: Scope, subject: &str| match scope {
        Scope::User => running.users.get(subject).copied().unwrap_or(0),
        Scope::Team => running.teams.get(subject).copied().unwrap_or(0),
        Scope::Global => running.total,
    };
    let caps = spec
        .limits
        .iter()
        .filter(|l| !shadow.of(l.scope))
        .map(|l| (l.max, running_in(l.scope, &l.subject)))
        .chain(
            spec.share
                .filter(|_| !shadow.global)
                .map(|sh| (sh.max, running.total)),
        );
    let (concurrency_limit, current_concurrency) = caps
        .min_by_key(|(limit, running)| limit.saturating_sub(*running))
        .unwrap_or((
            fallback_limit.unwrap_or(VIDU_DEFAULT_CONCURRENCY),
            running_in(Scope::User, user),
        ));
    Ok(CallerAccount {
        credit_remain,
        concurrency_limit,
        current_concurrency,
    })
}

/// Adds the running tasks the backend holds now to each section of `report` about `subject`.
pub fn add_running(report: &mut Report, settings: &Settings, subject: &Subject, now: &RunningNow) {
    if let (Some(section), Some(u)) = (report.user.as_mut(), &subject.user) {
        let rules = user_rules(settings, u, subject.team.as_deref());
        section.running_tasks = Some(RunningTasks {
            running: now.users.get(u).copied().unwrap_or(0),
            limit: rules.max_running_tasks.as_ref().map(|m| m.value.get()),
            source: rules
                .max_running_tasks
                .as_ref()
                .map(|m| m.key("max_running_tasks")),
            guarantee: None,
            pool_guarantee: None,
            teams: Default::default(),
        });
    }
    if let (Some(section), Some(t)) = (report.team.as_mut(), &subject.team) {
        let limit = team_limits(settings, Some(t)).max_running_tasks;
        let share = crate::policy::share::share_spec(settings, Some(t));
        section.running_tasks = Some(RunningTasks {
            running: now.teams.get(t).copied().unwrap_or(0),
            limit: limit.map(|m| m.get()),
            source: limit.map(|_| format!("policy.teams.{t}.team_max_running_tasks")),
            guarantee: share
                .as_ref()
                .filter(|s| s.group != ShareGroup::Pool)
                .map(|s| s.guarantee),
            pool_guarantee: share
                .as_ref()
                .filter(|s| s.group == ShareGroup::Pool)
                .map(|s| s.guarantee),
            teams: Default::default(),
        });
    }
    if let Some(section) = report.all.as_mut() {
        let limit = settings.policy.global.max_running_tasks;
        section.running_tasks = Some(RunningTasks {
            running: now.total,
            limit: limit.map(|m| m.get()),
            source: limit.map(|_| "policy.global.max_running_tasks".into()),
            guarantee: None,
            pool_guarantee: None,
            teams: now.teams.clone(),
        });
    }
}

/// [`collect`] from a source whose every answer is ready at once: a ledger file read directly (the `usage`
/// command).
pub fn report(
    settings: &Settings,
    source: &dyn Reports,
    now: Timestamp,
    subject: &Subject,
    from: Option<String>,
    to: Option<String>,
) -> Result<Report, String> {
    collect(settings, source, now, subject, from, to)
        .now_or_never()
        .unwrap_or_else(|| {
            Err(StoreError::Read(
                "a report source did not answer at once".into(),
            ))
        })
        .map_err(|e| e.to_string())
}

impl Report {
    /// The sections present, each with its scope name, in report order.
    pub fn sections(&self) -> impl Iterator<Item = (&'static str, &Section)> {
        [
            ("user", &self.user),
            ("team", &self.team),
            ("all", &self.all),
        ]
        .into_iter()
        .filter_map(|(scope, s)| s.as_ref().map(|s| (scope, s)))
    }
}

/// The report as CSV: one line per section and day.
pub fn to_csv(report: &Report) -> String {
    let mut out = String::from(
        "scope,name,day,admitted,rejected,credits_reserved,credits_settled,credits_released,credits_unknown,credits_refunded,off_peak_requests,rejected_by_reason\n",
    );
    for (scope, s) in report.sections() {
        for d in &s.days {
            let counts: Vec<String> = counts(d).iter().map(u64::to_string).collect();
            out.push_str(&format!(
                "{scope},{},{},{},{}\n",
                csv_field(&s.name),
                d.day,
                counts.join(","),
                csv_field(&reasons(d, ";"))
            ));
        }
    }
    out
}

/// A day's counts, in column order (the CSV's and the table's).
fn counts(d: &UsageRow) -> [u64; 8] {
    [
        d.admitted,
        d.rejected,
        d.credits_reserved,
        d.credits_settled,
        d.credits_released,
        d.credits_unknown,
        d.credits_refunded,
        d.off_peak_requests,
    ]
}

/// `Reason=count` pairs of a day, joined by `sep`.
fn reasons(d: &UsageRow, sep: &str) -> String {
    let pairs: Vec<String> = d
        .rejected_by_reason
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pairs.join(sep)
}

pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The table's count columns: heading and width.
const COLUMNS: [(&str, usize); 8] = [
    ("admitted", 8),
    ("rejected", 8),
    ("reserved", 9),
    ("settled", 9),
    ("released", 9),
    ("unknown", 8),
    ("refunded", 9),
    ("offpeak", 8),
];

/// One line of the table: a first column, the count columns, and free text.
fn table_line(first: &str, cells: &[String], last: &str) -> String {
    let mut line = format!("  {first:<10}");
    for (cell, (_, width)) in cells.iter().zip(COLUMNS) {
        line.push_str(&format!(" {cell:>width$}"));
    }
    line.push_str(&format!("  {last}\n"));
    line
}

/// The report as an aligned text table.
pub fn to_table(report: &Report) -> String {
    let text = |counts: [u64; 8]| counts.map(|c| c.to_string());
    let mut out = String::new();
    for (scope, s) in report.sections() {
        out.push_str(&format!("{scope} {}\n", s.name));
        for b in &s.budgets {
            out.push_str(&format!(
                "  budget {} {} ({}): {} of {} used, {} left  [{}]\n",
                b.period, b.scope, b.period_key, b.used, b.limit, b.remaining, b.source
            ));
        }
        out.push_str(&table_line(
            "day",
            &COLUMNS.map(|(heading, _)| heading.to_owned()),
            "rejected by reason",
        ));
        for d in &s.days {
            out.push_str(&table_line(&d.day, &text(counts(d)), &reasons(d, " ")));
        }
        let t = &s.totals;
        let totals = [
            t.admitted,
            t.rejected,
            t.credits_reserved,
            t.credits_settled,
            t.credits_released,
            t.credits_unknown,
            t.credits_refunded,
            t.off_peak_requests,
        ];
        out.push_str(&table_line(
            "total",
            &text(totals),
            &format!("off-peak share {:.0}%", t.off_peak_share * 100.0),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use futures_util::future::ready;

    use super::*;
    use crate::config::test_settings;
    use crate::state::Answer;

    /// A store with fixed spend per (scope, subject, period), recording the usage filters it is asked for.
    #[derive(Default)]
    struct Fake {
        spent: Vec<(Scope, &'static str, Period, u64)>,
        days: Vec<UsageRow>,
        asked: RefCell<Vec<UsageFilter>>,
        keys: RefCell<Vec<BudgetKey>>,
    }

    impl Reports for Fake {
        fn used<'a>(&'a self, keys: &'a [BudgetKey]) -> Answer<'a, Vec<u64>> {
            self.keys.borrow_mut().extend(keys.iter().cloned());
            let used = keys
                .iter()
                .map(|key| {
                    self.spent
                        .iter()
                        .find(|(s, who, p, _)| {
                            *s == key.scope && *who == key.subject && *p == key.period
                        })
                        .map_or(0, |&(.., n)| n)
                })
                .collect();
            ready(Ok(used)).boxed()
        }
        fn usage<'a>(&'a self, filter: &'a UsageFilter) -> Answer<'a, Vec<UsageRow>> {
            self.asked.borrow_mut().push(filter.clone());
            ready(Ok(self.days.clone())).boxed()
        }
    }

    fn day(day: &str, admitted: u64, off_peak: u64, settled: u64) -> UsageRow {
        UsageRow {
            day: day.into(),
            admitted,
            off_peak_requests: off_peak,
            credits_settled: settled,
            ..UsageRow::default()
        }
    }

    fn identity(user: &str, team: Option<&str>) -> Identity {
        Identity {
            user: user.into(),
            team: team.map(str::to_owned),
            roles: Vec::new(),
            is_admin: false,
        }
    }

    /// 16:30 UTC on 25 November is 00:30 on the 26th in Shanghai, the default policy time zone.
    fn now() -> Timestamp {
        "2026-11-25T16:30:00Z".parse().unwrap()
    }

    #[test]
    fn a_caller_without_names_gets_their_own_user_and_team_and_names_are_taken_as_given() {
        let own = Subject::resolve(&identity("alice", Some("mkt")), None, None);
        assert_eq!(
            (own.user.as_deref(), own.team.as_deref()),
            (Some("alice"), Some("mkt"))
        );
        let named = Subject::resolve(&identity("root", Some("ops")), None, Some("sales".into()));
        assert_eq!((named.user, named.team.as_deref()), (None, Some("sales")));
    }

    #[test]
    fn totals_add_up_the_days_and_the_off_peak_share_is_of_admitted_requests() {
        let t = totals(&[day("2026-11-25", 3, 1, 100), day("2026-11-26", 1, 1, 40)]);
        assert_eq!(
            (t.admitted, t.off_peak_requests, t.credits_settled),
            (4, 2, 140)
        );
        assert_eq!(t.off_peak_share, 0.5);
        assert_eq!(
            totals(&[]).off_peak_share,
            0.0,
            "no admitted request: no share"
        );
    }

    #[test]
    fn budgets_are_the_rules_in_force_on_the_local_day_with_the_key_that_set_them() {
        let settings = test_settings(
            "[policy.defaults]\ndaily_credits = 100\n[policy.teams.mkt]\nteam_daily_credits = 1000\nteam_monthly_credits = 5000\n",
        );
        let store = Fake {
            spent: vec![
                (Scope::User, "alice", Period::Day, 55),
                (Scope::Team, "mkt", Period::Day, 300),
            ],
            days: vec![day("2026-11-26", 2, 0, 55)],
            ..Fake::default()
        };
        let subject = Subject {
            user: Some("alice".into()),
            team: Some("mkt".into()),
        };
        let from = Some("2026-11-01".to_owned());
        let r = report(&settings, &store, now(), &subject, from.clone(), None).unwrap();

        let user = r.user.as_ref().unwrap();
        assert_eq!(user.name, "alice");
        assert_eq!(user.budgets.len(), 1, "no monthly budget is set for users");
        let b = &user.budgets[0];
        assert_eq!(
            (b.scope, b.period, b.period_key.as_str()),
            ("user", "daily", "2026-11-26")
        );
        assert_eq!((b.limit, b.used, b.remaining), (100, 55, 45));
        assert_eq!(b.source, "policy.defaults.daily_credits");
        assert_eq!(user.totals.admitted, 2);

        let team = r.team.as_ref().unwrap();
        let got: Vec<_> = team
            .budgets
            .iter()
            .map(|b| (b.period, b.period_key.as_str(), b.limit, b.remaining))
            .collect();
        assert_eq!(
            got,
            [
                ("daily", "2026-11-26", 1000, 700),
                ("monthly", "2026-11", 5000, 5000)
            ]
        );
        assert_eq!(
            team.budgets[1].source,
            "policy.teams.mkt.team_monthly_credits"
        );
        assert!(r.all.is_none(), "the whole key only when no one is named");

        let asked: Vec<_> = store
            .asked
            .borrow()
            .iter()
            .map(|f| (f.user.clone(), f.team.clone(), f.from.clone(), f.to.clone()))
            .collect();
        assert_eq!(
            asked,
            [
                (Some("alice".into()), None, from.clone(), None),
                (None, Some("mkt".into()), from, None)
            ],
            "each section's days are its own"
        );
    }

    /// The report on `user` alone, with a daily budget of 100 credits of which `spent` are used today.
    fn daily_100_report(user: &'static str, spent: u64) -> Report {
        let settings = test_settings("[policy.defaults]\ndaily_credits = 100\n");
        let store = Fake {
            spent: vec![(Scope::User, user, Period::Day, spent)],
            ..Fake::default()
        };
        let subject = Subject {
            user: Some(user.into()),
            team: None,
        };
        report(&settings, &store, now(), &subject, None, None).unwrap()
    }

    #[test]
    fn remaining_is_zero_not_negative_when_a_lowered_limit_is_below_the_spend() {
        let r = daily_100_report("alice", 150);
        let b = &r.user.unwrap().budgets[0];
        assert_eq!((b.limit, b.used, b.remaining), (100, 150, 0));
        assert!(r.team.is_none());
    }

    #[test]
    fn naming_no_one_reports_the_whole_key_against_the_global_budget() {
        let settings = test_settings("[policy.global]\nmonthly_credits = 9000\n");
        let store = Fake {
            spent: vec![(Scope::Global, "", Period::Month, 1200)],
            days: vec![day("2026-11-25", 7, 0, 1200)],
            ..Fake::default()
        };
        let r = report(&settings, &store, now(), &Subject::default(), None, None).unwrap();
        assert!(r.user.is_none() && r.team.is_none());
        let all = r.all.as_ref().unwrap();
        assert_eq!(all.name, "all");
        assert_eq!(all.budgets.len(), 1);
        let b = &all.budgets[0];
        assert_eq!(
            (b.scope, b.period, b.period_key.as_str()),
            ("global", "monthly", "2026-11")
        );
        assert_eq!((b.limit, b.remaining), (9000, 7800));
        assert_eq!(b.source, "policy.global.monthly_credits");
        let f = &store.asked.borrow()[0];
        assert!(f.user.is_none() && f.team.is_none());
        assert_eq!(
            r.sections().map(|(scope, _)| scope).collect::<Vec<_>>(),
            ["all"]
        );
    }

    #[test]
    fn csv_quotes_names_that_need_it_and_lists_rejections_by_reason() {
        let mut d = day("2026-11-25", 2, 1, 80);
        d.rejected = 3;
        d.rejected_by_reason = [
            ("CreditBudgetExhausted".to_owned(), 2),
            ("TooManyRequests".to_owned(), 1),
        ]
        .into_iter()
        .collect();
        let section = |name: &str| Section {
            running_tasks: None,
            name: name.into(),
            budgets: Vec::new(),
            totals: totals(std::slice::from_ref(&d)),
            days: vec![d.clone()],
        };
        let r = Report {
            user: Some(section("a,\"b\"")),
            team: Some(section("mkt")),
            all: None,
            vidu_balance: None,
        };
        let csv = to_csv(&r);
        let lines: Vec<&str> = csv.lines().collect();
        assert!(lines[0].starts_with("scope,name,day,admitted,rejected,"));
        assert_eq!(
            lines[1],
            "user,\"a,\"\"b\"\"\",2026-11-25,2,3,0,80,0,0,0,1,CreditBudgetExhausted=2;TooManyRequests=1"
        );
        assert!(lines[2].starts_with("team,mkt,2026-11-25,"), "{csv}");
        assert_eq!(lines.len(), 3);

        let table = to_table(&r);
        assert!(table.contains("user a,\"b\"\n"), "{table}");
        assert!(
            table.contains("CreditBudgetExhausted=2 TooManyRequests=1"),
            "{table}"
        );
        assert!(table.contains("off-peak share 50%"), "{table}");
    }

    #[test]
    fn the_table_shows_each_budget_with_the_key_that_set_it() {
        let table = to_table(&daily_100_report("bob", 40));
        assert!(
            table.contains(
                "budget daily user (2026-11-26): 40 of 100 used, 60 left  [policy.defaults.daily_credits]"
            ),
            "{table}"
        );
    }
}
