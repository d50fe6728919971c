//! The memory backend's running-task slots: who holds one (a grant in flight or unknown, then its task), until
//! when without news, and the counts per user, team and globally the admission decision reads; plus when each
//! share group last asked for a slot (fair share's "active").

use std::collections::BTreeSet;

use super::*;
use crate::state::share::{self, Other, ShareFull};

struct Holder {
    user: String,
    team: String,
    /// Freed at this time (ms) unless news of its task comes first.
    until: i64,
}

#[derive(Default)]
pub(super) struct Running {
    holders: HashMap<String, Holder>,
    by_expiry: BTreeSet<(i64, String)>,
    users: HashMap<String, u32>,
    teams: HashMap<String, u32>,
    total: u32,
    /// When each share group last asked for a slot (ms).
    asked: HashMap<ShareGroup, i64>,
}

fn bump(counts: &mut HashMap<String, u32>, key: &str, up: bool) {
    if up {
        match counts.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                counts.insert(key.to_owned(), 1);
            }
        }
    } else if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

impl Running {
    /// Frees every slot whose time ran out.
    pub(super) fn prune(&mut self, now: i64) {
        while let Some((until, member)) = self.by_expiry.first().cloned() {
            if until > now {
                break;
            }
            self.free(&member);
        }
    }

    pub(super) fn count(&self, scope: Scope, subject: &str) -> u32 {
        match scope {
            Scope::User => self.users.get(subject).copied().unwrap_or(0),
            Scope::Team => self.teams.get(subject).copied().unwrap_or(0),
            Scope::Global => self.total,
        }
    }

    /// The counts, as reported.
    pub(super) fn now(&self) -> RunningNow {
        RunningNow {
            total: self.total,
            teams: self.teams.iter().map(|(t, n)| (t.clone(), *n)).collect(),
            users: self.users.iter().map(|(u, n)| (u.clone(), *n)).collect(),
        }
    }

    /// Checks the user, team and global caps for one more slot (the run holds one), noting that the request's
    /// share group asked (when `take`). A cap of a `shadow` scope that would refuse is pushed to `shadowed`
    /// instead (the slot is counted all the same: running tasks are counted in every scope).
    pub(super) fn check(
        &mut self,
        spec: &RunningSpec,
        shadow: Shadow,
        now: i64,
        take: bool,
        shadowed: &mut Vec<Refusal>,
    ) -> Result<(), Refusal> {
        self.prune(now);
        for s in &spec.limits {
            let running = self.count(s.scope, &s.subject);
            if running >= s.max {
                let refusal = Refusal::Running {
                    scope: s.scope,
                    subject: s.subject.clone(),
                    max: s.max,
                    running,
                    source: s.source.clone(),
                    share: None,
                };
                if !shadow.of(s.scope) {
                    return Err(refusal);
                }
                shadowed.push(refusal);
            }
        }
        let Some(share) = &spec.share else {
            return Ok(());
        };
        // The group asks for a global slot (a request its own caps already refuse does not make it active).
        if take {
            self.asked.insert(share.group.clone(), now);
        }
        // The pool runs whatever the listed teams do not.
        let team_running = |g: &ShareGroup| match g {
            ShareGroup::Team(t) => Some(self.count(Scope::Team, t)),
            ShareGroup::Pool => None,
        };
        let listed: u32 = team_running(&share.group).unwrap_or(0)
            + share
                .others
                .iter()
                .filter_map(|(g, _)| team_running(g))
                .sum::<u32>();
        let pool = self.total.saturating_sub(listed);
        let mine = team_running(&share.group).unwrap_or(pool);
        let idle_since = now.saturating_sub(i64::try_from(share.idle_ms).unwrap_or(i64::MAX));
        let others = share.others.iter().map(|(g, guarantee)| {
            let running = team_running(g).unwrap_or(pool);
            Other {
                running,
                guarantee: *guarantee,
                active: running > 0 || self.asked.get(g).is_some_and(|at| *at > idle_since),
            }
        });
        let decided =
            share::admits(share.max, self.total, mine, share.guarantee, others).map_err(|full| {
                Refusal::Running {
                    scope: Scope::Global,
                    subject: String::new(),
                    max: share.max,
                    running: self.total,
                    source: share.source.clone(),
                    share: match full {
                        ShareFull::NoSlot => None,
                        ShareFull::KeptForOthers { free, owed } => Some(ShareRefusal {
                            group: share.group.clone(),
                            running: mine,
                            guarantee: share.guarantee,
                            guarantee_source: share.guarantee_source.clone(),
                            free,
                            owed,
                        }),
                    },
                }
            });
        match decided {
            Err(refusal) if shadow.global => {
                shadowed.push(refusal);
                Ok(())
            }
            other => other,
        }
    }

    /// A slot held by `member` (a grant, then its task) until `until` (ms).
    pub(super) fn take(&mut self, member: String, user: &str, team: &str, until: i64) {
        if self.holders.contains_key(&member) {
            return;
        }
        bump(&mut self.users, user, true);
        if !team.is_empty() {
            bump(&mut self.teams, team, true);
        }
        self.total += 1;
        self.by_expiry.insert((until, member.clone()));
        self.holders.insert(
            member,
            Holder {
                user: user.to_owned(),
                team: team.to_owned(),
                until,
            },
        );
    }

    /// News of `member`'s task: its slot is kept until `until`.
    pub(super) fn touch(&mut self, member: &str, until: i64) {
        if let Some(h) = self.holders.get_mut(member) {
            self.by_expiry.remove(&(h.until, member.to_owned()));
            h.until = until;
            self.by_expiry.insert((until, member.to_owned()));
        }
    }

    /// The slot of a grant passes to the task Vidu created for it; `false` when the grant held none (any more).
    pub(super) fn rename(&mut self, from: &str, to: String, until: i64) -> bool {
        let Some(h) = self.holders.remove(from) else {
            return false;
        };
        self.by_expiry.remove(&(h.until, from.to_owned()));
        self.by_expiry.insert((until, to.clone()));
        self.holders.insert(to, Holder { until, ..h });
        true
    }

    pub(super) fn free(&mut self, member: &str) {
        if let Some(h) = self.holders.remove(member) {
            self.by_expiry.remove(&(h.until, member.to_owned()));
            bump(&mut self.users, &h.user, false);
            bump(&mut self.teams, &h.team, false);
            self.total = self.total.saturating_sub(1);
        }
    }
}
