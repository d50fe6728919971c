//! The admission script's request, written as flat arguments in the order `admit.lua` reads them: strings in
//! turn, a list as its length then its items, an absent value as `''`, a flag as `'1'`/`'0'`. Flat, not JSON:
//! Redis decoding a 3 KB JSON request cost more than every check the script then makes.

use ::redis::{Script, ScriptInvocation};

use super::{Keys, RedisStore};
use crate::state::{
    AdmissionRequest, BudgetKey, BudgetSpec, GrantId, Mode, Plan, Run, Scope, ShareGroup,
};

fn flag(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

/// The arguments of one invocation, appended in order.
struct Args<'a>(ScriptInvocation<'a>);

impl Args<'_> {
    fn put<T: ::redis::ToRedisArgs>(&mut self, v: T) -> &mut Self {
        self.0.arg(v);
        self
    }

    fn flag(&mut self, b: bool) -> &mut Self {
        self.put(flag(b))
    }

    /// `''` for none, else off-peak then the estimate.
    fn run(&mut self, run: Option<&Run>) -> &mut Self {
        match run {
            None => self.put(""),
            Some(r) => self.flag(r.off_peak).put(r.estimate),
        }
    }

    fn budget(&mut self, keys: &Keys, b: &BudgetSpec, shadow: bool) -> &mut Self {
        self.put(keys.budget(&b.key))
            .put(b.limit)
            .flag(b.key.scope == Scope::Team)
            .flag(shadow)
    }

    fn counting(&mut self, keys: &Keys, counting: &[BudgetKey]) -> &mut Self {
        self.put(counting.len());
        for k in counting {
            self.put(keys.budget(k)).put(super::budget_ttl_secs(k));
        }
        self
    }
}

impl RedisStore {
    /// `admit.lua`'s invocation for one request.
    pub(super) fn admission_args<'s>(
        &'s self,
        script: &'s Script,
        req: &AdmissionRequest,
        mode: Mode,
        grant: GrantId,
    ) -> ScriptInvocation<'s> {
        let keys = &self.keys;
        let r = &req.record;
        let mut a = Args(script.prepare_invoke());
        match &self.clock {
            Some(c) => a.put(c.now().as_microsecond()),
            None => a.put(""),
        };
        a.flag(mode == Mode::Take)
            .put(self.lease_ms)
            .put(self.retention_secs)
            .put(grant.to_string())
            .put(keys.grant(grant))
            .put(keys.grants());
        match &req.plan {
            Plan::Fixed(run) => a.put("fixed").run(Some(run)),
            Plan::Fallback(f) => a
                .put("fallback")
                .budget(keys, &f.immediate_budget, false)
                .put(f.immediate_estimate)
                .run(f.if_covered.as_ref())
                .run(f.if_short.as_ref()),
        };
        a.put(req.slots.len());
        for s in &req.slots {
            a.put(keys.slot(s)).put(s.max).flag(req.shadow.of(s.scope));
        }

        // Running-task slots: the keys a slot is held in (user, team, global: the script takes the last as the
        // global one), the caps, the fair share's groups.
        let rn = &req.running;
        let mut holds_in = vec![keys.running(Scope::User, &r.user)];
        if !r.team.is_empty() {
            holds_in.push(keys.running(Scope::Team, &r.team));
        }
        holds_in.push(keys.running(Scope::Global, ""));
        a.put(rn.ttl_ms)
            .flag(rn.offpeak_holds)
            .put(keys.share_asked())
            .put(holds_in.len())
            .put(holds_in)
            .put(rn.limits.len());
        for l in &rn.limits {
            a.put(keys.running(l.scope, &l.subject))
                .put(l.max)
                .flag(req.shadow.of(l.scope));
        }
        let group = |g: &ShareGroup| match g {
            ShareGroup::Team(t) => (keys.running(Scope::Team, t), format!("t:{t}")),
            ShareGroup::Pool => (String::new(), "pool".to_owned()),
        };
        match &rn.share {
            None => {
                a.flag(false);
            }
            Some(sh) => {
                let (team_key, field) = group(&sh.group);
                a.flag(true)
                    .put(sh.max)
                    .put(team_key)
                    .put(field)
                    .put(sh.guarantee)
                    .put(sh.idle_ms)
                    .flag(req.shadow.global)
                    .put(sh.others.len());
                for (g, guarantee) in &sh.others {
                    let (team_key, field) = group(g);
                    a.put(team_key).put(field).put(*guarantee);
                }
            }
        }

        a.put(req.budgets.len());
        for b in &req.budgets {
            a.budget(keys, b, req.shadow.of(b.key.scope));
        }
        a.put(req.rates.len());
        for x in &req.rates {
            a.put(keys.rate(x))
                .put(x.per_minute.get())
                .put(x.burst.get())
                .flag(req.shadow.of(x.scope));
        }
        a.counting(keys, &BudgetKey::counting(r, false))
            .counting(keys, &BudgetKey::counting(r, true))
            .put(&r.user)
            .put(&r.team)
            .put(&r.day)
            .put(&r.model)
            .put(&r.request_id);
        let member = Keys::member(&r.team, &r.user);
        a.put(format!("{}{}:{member}", keys.usage_prefix(), r.day))
            .put(keys.days())
            .put(format!("{}{}", keys.members_prefix(), r.day))
            .put(&r.day)
            .put(member);
        a.0
    }
}
