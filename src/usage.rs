//! Usage reports from the ledger: current budgets (limit, used, remaining) and per-day admitted/rejected
//! requests and credits — for `GET /gateway/v1/usage` and `vidu-gateway usage`.

use jiff::Timestamp;
use serde::Serialize;

use crate::auth::Identity;
use crate::config::Settings;
use crate::policy::periods::periods;
use crate::policy::resolve::{team_limits, user_rules};
use crate::state::ledger::Ledger;
use crate::state::{AdmissionStore, BudgetKey, Period, Scope, UsageFilter, UsageRow};

/// Where usage is read from: the running store (API) or the ledger file (CLI).
pub trait UsageSource {
    fn used(&self, key: &BudgetKey) -> Result<u64, String>;
    fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRow>, String>;
}

impl UsageSource for dyn AdmissionStore {
    fn used(&self, key: &BudgetKey) -> Result<u64, String> {
        AdmissionStore::used(self, key)
    }
    fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRow>, String> {
        AdmissionStore::usage(self, filter)
    }
}

impl UsageSource for Ledger {
    fn used(&self, key: &BudgetKey) -> Result<u64, String> {
        Ledger::used(self, key).map_err(|e| e.to_string())
    }
    fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRow>, String> {
        Ledger::usage(self, filter).map_err(|e| e.to_string())
    }
}

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

#[derive(Clone, Debug, Serialize)]
pub struct Budget {
    pub scope: &'static str,
    pub period: &'static str,
    pub period_key: String,
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    pub source: String,
}

#[derive(Clone, Debug, Serialize, Default)]
pub struct Totals {
    pub admitted: u64,
    pub rejected: u64,
    pub credits_reserved: u64,
    pub credits_settled: u64,
    pub credits_released: u64,
    pub credits_unknown: u64,
    pub off_peak_requests: u64,
    /// Share of admitted requests that ran off-peak (0..=1).
    pub off_peak_share: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Section {
    pub name: String,
    pub budgets: Vec<Budget>,
    pub totals: Totals,
    pub days: Vec<UsageRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Section>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<Section>,
    /// Everyone (the enterprise key as a whole): when neither a user nor a team is named (CLI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all: Option<Section>,
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
        t.off_peak_requests += d.off_peak_requests;
    }
    if t.admitted > 0 {
        t.off_peak_share = t.off_peak_requests as f64 / t.admitted as f64;
    }
    t
}

fn budget(
    store: &(impl UsageSource + ?Sized),
    scope: Scope,
    subject: &str,
    period: Period,
    period_key: &str,
    limit: Option<u64>,
    source: String,
) -> Result<Option<Budget>, String> {
    let Some(limit) = limit else { return Ok(None) };
    let key = BudgetKey {
        scope,
        subject: subject.to_owned(),
        period,
        period_key: period_key.to_owned(),
    };
    let used = store.used(&key)?;
    Ok(Some(Budget {
        scope: scope.as_str(),
        period: period.as_str(),
        period_key: period_key.to_owned(),
        limit,
        used,
        remaining: limit.saturating_sub(used),
        source,
    }))
}

pub fn report(
    settings: &Settings,
    store: &(impl UsageSource + ?Sized),
    now: Timestamp,
    subject: &Subject,
    from: Option<String>,
    to: Option<String>,
) -> Result<Report, String> {
    let p = periods(now, settings.policy.timezone.tz());
    let (from_all, to_all) = (from.clone(), to.clone());
    let user = match &subject.user {
        None => None,
        Some(u) => {
            let rules = user_rules(settings, u, subject.team.as_deref());
            let mut budgets = Vec::new();
            for (period, key, limit) in [
                (Period::Day, &p.day, rules.daily_credits.as_ref()),
                (Period::Month, &p.month, rules.monthly_credits.as_ref()),
                (
                    Period::ImmediateDay,
                    &p.day,
                    rules.immediate_daily_credits.as_ref(),
                ),
            ] {
                let name = match period {
                    Period::Day => "daily_credits",
                    Period::Month => "monthly_credits",
                    Period::ImmediateDay => "immediate_daily_credits",
                };
                budgets.extend(budget(
                    store,
                    Scope::User,
                    u,
                    period,
                    key,
                    limit.map(|l| l.value),
                    limit.map(|l| l.key(name)).unwrap_or_default(),
                )?);
            }
            let days = store.usage(&UsageFilter {
                user: Some(u.clone()),
                team: None,
                from: from.clone(),
                to: to.clone(),
            })?;
            Some(Section {
                name: u.clone(),
                budgets,
                totals: totals(&days),
                days,
            })
        }
    };
    let team = match &subject.team {
        None => None,
        Some(t) => {
            let limits = team_limits(settings, Some(t));
            let mut budgets = Vec::new();
            budgets.extend(budget(
                store,
                Scope::Team,
                t,
                Period::Day,
                &p.day,
                limits.daily_credits,
                format!("policy.teams.{t}.team_daily_credits"),
            )?);
            budgets.extend(budget(
                store,
                Scope::Team,
                t,
                Period::Month,
                &p.month,
                limits.monthly_credits,
                format!("policy.teams.{t}.team_monthly_credits"),
            )?);
            let days = store.usage(&UsageFilter {
                user: None,
                team: Some(t.clone()),
                from,
                to,
            })?;
            Some(Section {
                name: t.clone(),
                budgets,
                totals: totals(&days),
                days,
            })
        }
    };
    let all = if subject.user.is_none() && subject.team.is_none() {
        let g = &settings.policy.global;
        let mut budgets = Vec::new();
        budgets.extend(budget(
            store,
            Scope::Global,
            "",
            Period::Day,
            &p.day,
            g.daily_credits,
            "policy.global.daily_credits".into(),
        )?);
        budgets.extend(budget(
            store,
            Scope::Global,
            "",
            Period::Month,
            &p.month,
            g.monthly_credits,
            "policy.global.monthly_credits".into(),
        )?);
        let days = store.usage(&UsageFilter {
            user: None,
            team: None,
            from: from_all,
            to: to_all,
        })?;
        Some(Section {
            name: "all".into(),
            budgets,
            totals: totals(&days),
            days,
        })
    } else {
        None
    };
    Ok(Report { user, team, all })
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
        "scope,name,day,admitted,rejected,credits_reserved,credits_settled,credits_released,credits_unknown,off_peak_requests,rejected_by_reason\n",
    );
    for (scope, s) in report.sections() {
        for d in &s.days {
            out.push_str(&format!(
                "{scope},{},{},{},{},{},{},{},{},{},{}\n",
                csv_field(&s.name),
                d.day,
                d.admitted,
                d.rejected,
                d.credits_reserved,
                d.credits_settled,
                d.credits_released,
                d.credits_unknown,
                d.off_peak_requests,
                csv_field(&reasons(d, ";"))
            ));
        }
    }
    out
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

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The report as an aligned text table.
pub fn to_table(report: &Report) -> String {
    let mut out = String::new();
    for (scope, s) in report.sections() {
        out.push_str(&format!("{scope} {}\n", s.name));
        for b in &s.budgets {
            out.push_str(&format!(
                "  budget {} {} ({}): {} of {} used, {} left  [{}]\n",
                b.period, b.scope, b.period_key, b.used, b.limit, b.remaining, b.source
            ));
        }
        out.push_str(&format!(
            "  {:<10} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8}  rejected by reason\n",
            "day", "admitted", "rejected", "reserved", "settled", "released", "unknown", "offpeak"
        ));
        for d in &s.days {
            out.push_str(&format!(
                "  {:<10} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8}  {}\n",
                d.day,
                d.admitted,
                d.rejected,
                d.credits_reserved,
                d.credits_settled,
                d.credits_released,
                d.credits_unknown,
                d.off_peak_requests,
                reasons(d, " ")
            ));
        }
        let t = &s.totals;
        out.push_str(&format!(
            "  {:<10} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8}  off-peak share {:.0}%\n",
            "total",
            t.admitted,
            t.rejected,
            t.credits_reserved,
            t.credits_settled,
            t.credits_released,
            t.credits_unknown,
            t.off_peak_requests,
            t.off_peak_share * 100.0
        ));
    }
    out
}
