-- One admission decision over every bucket of a request, atomically: the plan (for the off-peak `fallback`
-- rule, the immediate budget decides which run), then in-flight slots, running-task slots, budgets and rates are
-- all checked; then,
-- when asked to take, everything is taken. A refusal takes nothing. The request comes as flat ARGV, in the order
-- `state/redis/admission.rs` writes it: strings read in turn, lists as a count then their items, an absent value
-- as ''. (Flat arguments, not JSON: decoding a 3 KB JSON request took Redis longer than all the checks.) The
-- answer is JSON. Time is Redis's own (`TIME`) unless the request carries `now_us` (tests on a manual clock).
local null = cjson.null

-- The reader: each call takes the next argument.
local at = 0
local function nx()
  at = at + 1
  return ARGV[at]
end
local function nnum() return tonumber(nx()) end
local function nflag() return nx() == '1' end
local function nkey()
  local k = nx()
  if k == '' then return nil end
  return k
end
-- A record: its fields read in the order listed, each with its reader.
local function record(fields)
  return function()
    local r = {}
    for _, f in ipairs(fields) do r[f[1]] = f[2]() end
    return r
  end
end
-- A run: '' (none), or off-peak ('1'/'0') then the estimate (also kept as given, to pass to Redis unconverted).
local function nrun()
  local op = nx()
  if op == '' then return nil end
  local est = nx()
  return { off_peak = op == '1', estimate = tonumber(est), est = est }
end
local function nlist(item)
  local out = {}
  for i = 1, nnum() do out[i] = item() end
  return out
end
local nbudget = record({ { 'key', nx }, { 'limit', nnum }, { 'team', nflag }, { 'shadow', nflag } })
local ncap = record({ { 'key', nx }, { 'max', nnum }, { 'shadow', nflag } })

local req = record({
  { 'now_us', nnum }, { 'take', nflag }, { 'lease_ms', nnum }, { 'retention_s', nx }, { 'grant', nx },
  { 'grant_key', nx }, { 'grants', nx },
})()
req.plan = {}
if nx() == 'fixed' then
  req.plan.fixed = nrun()
else
  req.plan.fallback = record({ { 'budget', nbudget }, { 'estimate', nnum }, { 'if_covered', nrun },
    { 'if_short', nrun } })()
end
req.slots = nlist(ncap)
local rn = record({ { 'ttl_ms_s', nx }, { 'offpeak_holds', nflag }, { 'asked', nx } })()
rn.ttl_ms = tonumber(rn.ttl_ms_s)
-- The keys a slot is held in: the user's, the team's (when there is one), the global one last.
rn.holds_in = nlist(nx)
rn.global = rn.holds_in[#rn.holds_in]
rn.limits = nlist(ncap)
if nflag() then
  rn.share = record({ { 'max', nnum }, { 'team_key', nkey }, { 'field', nx }, { 'guarantee', nnum },
    { 'idle_ms', nnum }, { 'shadow', nflag },
    { 'others', function() return nlist(record({ { 'team_key', nkey }, { 'field', nx }, { 'guarantee', nnum } })) end },
  })()
end
req.budgets = nlist(nbudget)
req.rates = nlist(record({ { 'key', nx }, { 'per_minute', nnum }, { 'burst', nnum }, { 'shadow', nflag } }))
local ncounting = record({ { 'key', nx }, { 'ttl_s', nx } })
req.counting_immediate = nlist(ncounting)
req.counting_off_peak = nlist(ncounting)
local rec = record({ { 'user', nx }, { 'team', nx }, { 'day', nx }, { 'model', nx }, { 'request_id', nx } })()
local u = record({ { 'hash', nx }, { 'days', nx }, { 'members', nx }, { 'day', nx }, { 'member', nx } })()

local now_us = req.now_us
if now_us == nil then
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local now_ms = math.floor(now_us / 1000)

local function num(v)
  return tonumber(v) or 0
end

-- The plan.
local run, imm_used, imm_budget
if req.plan.fixed then
  run = req.plan.fixed
else
  local f = req.plan.fallback
  imm_used = num(redis.call('GET', f.budget.key))
  if imm_used + f.estimate <= f.budget.limit then
    run = f.if_covered
  else
    run = f.if_short
  end
  if run and not run.off_peak then imm_budget = f.budget end
end
if not run then
  return cjson.encode({ run = null, imm_used = imm_used or null, refusal = { kind = 'norun' } })
end

local answer_run = { off_peak = run.off_peak, estimate = run.estimate }
local function refused(r)
  return cjson.encode({ run = answer_run, imm_used = imm_used or null, refusal = r })
end

-- Limits under `enforce = "shadow"` that would refuse are reported beside the grant and take nothing.
local shadowed = {}
local function refuse_or_shadow(is_shadow, r)
  if is_shadow then
    shadowed[#shadowed + 1] = r
    return nil
  end
  return refused(r)
end

-- In-flight slots: leases whose expiry has passed are dropped first.
local skip_slot = {}
for i, s in ipairs(req.slots) do
  redis.call('ZREMRANGEBYSCORE', s.key, '-inf', now_ms)
  if redis.call('ZCARD', s.key) >= s.max then
    local answer = refuse_or_shadow(s.shadow, { kind = 'slot', i = i - 1 })
    if answer then return answer end
    skip_slot[i] = true
  end
end

-- Running-task slots (when the run holds one): the user's and team's caps, then the global one with its fair
-- share (`state/share.rs` is the same arithmetic). Holders whose time ran out without news are dropped first.
local holds = rn.ttl_ms > 0 and ((not run.off_peak) or rn.offpeak_holds)
local function running_in(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  return redis.call('ZCARD', key)
end
if holds then
  local sh = rn.share
  for i, l in ipairs(rn.limits) do
    local n = running_in(l.key)
    if n >= l.max then
      local answer = refuse_or_shadow(l.shadow, { kind = 'running', i = i - 1, running = n })
      if answer then return answer end
    end
  end
  if sh then
    -- The group asks for a global slot (a request its own caps already refuse does not make it active).
    if req.take then redis.call('HSET', rn.asked, sh.field, now_ms) end
    local total = running_in(rn.global)
    local share_refusal
    -- The pool runs whatever the listed teams do not.
    local listed, counts, mine = 0, {}, nil
    if sh.team_key then
      mine = running_in(sh.team_key)
      listed = listed + mine
    end
    local fields = {}
    for j, o in ipairs(sh.others) do
      fields[j] = o.field
      if o.team_key then
        counts[j] = running_in(o.team_key)
        listed = listed + counts[j]
      end
    end
    local pool = math.max(total - listed, 0)
    if mine == nil then mine = pool end
    if total >= sh.max then
      share_refusal = { kind = 'running', i = -1, running = total }
    elseif mine >= sh.guarantee then
      local free = sh.max - total
      local owed = 0
      local asked = {}
      if #fields > 0 then asked = redis.call('HMGET', rn.asked, unpack(fields)) end
      for j, o in ipairs(sh.others) do
        local r = counts[j] or pool
        local at = tonumber(asked[j])
        local active = r > 0 or (at ~= nil and at > now_ms - sh.idle_ms)
        if active and o.guarantee > r then owed = owed + (o.guarantee - r) end
      end
      if free - 1 < owed then
        share_refusal = { kind = 'running', i = -1, running = total,
          share = { running = mine, free = free, owed = owed } }
      end
    end
    if share_refusal then
      local answer = refuse_or_shadow(sh.shadow, share_refusal)
      if answer then return answer end
    end
  end
end

-- Budgets (the fallback's immediate budget last, when the run is immediate).
local budgets = {}
for _, b in ipairs(req.budgets) do budgets[#budgets + 1] = b end
if imm_budget then budgets[#budgets + 1] = imm_budget end
local remaining, team_remaining
-- Every counter in one read.
local used_all = {}
if #budgets > 0 then
  local names = {}
  for i, b in ipairs(budgets) do names[i] = b.key end
  used_all = redis.call('MGET', unpack(names))
end
for i, b in ipairs(budgets) do
  local used = num(used_all[i])
  if used + run.estimate > b.limit then
    local answer = refuse_or_shadow(b.shadow, { kind = 'budget', i = i - 1, used = used })
    if answer then return answer end
  end
  -- A shadow budget is not what the caller may spend: it is left out of the remaining credits.
  if not b.shadow then
    local left = b.limit - used - run.estimate
    if remaining == nil or left < remaining then remaining = left end
    if b.team and (team_remaining == nil or left < team_remaining) then team_remaining = left end
  end
end

-- Rates: GCRA (emission interval t, tolerance t * (burst - 1)), in microseconds.
local taken = {}
local tightest
for i, r in ipairs(req.rates) do
  local t = 60000000 / r.per_minute
  local tau = t * (r.burst - 1)
  local h = redis.call('HMGET', r.key, 'tat', 'since')
  local tat, since = tonumber(h[1]), tonumber(h[2])
  local full = (tat == nil) or tat <= now_us
  local cur = tat or now_us
  if now_us < cur - tau then
    local drained = 0
    if since then drained = now_us - since end
    local answer = refuse_or_shadow(r.shadow,
      { kind = 'rate', i = i - 1, wait_us = cur - tau - now_us, per_minute = drained >= 60000000 })
    if answer then return answer end
  else
    local new = math.max(cur, now_us) + t
    local left = math.floor(math.min(now_us + t + tau - new, tau) / t + 0.000001)
    if full then since = now_us end
    taken[#taken + 1] = { key = r.key, tat = new, since = since, ttl_ms = math.ceil((new - now_us) / 1000) + 1000 }
    if tightest == nil or left < tightest.remaining then tightest = { i = i - 1, remaining = left } end
  end
end

local granted = { remaining = remaining or null, team_remaining = team_remaining or null, rate = tightest or null }
if #shadowed > 0 then granted.shadow = shadowed end
if not req.take then
  return cjson.encode({ run = answer_run, imm_used = imm_used or null, granted = granted })
end

-- Take everything.
for _, r in ipairs(taken) do
  redis.call('HSET', r.key, 'tat', string.format('%.3f', r.tat), 'since', string.format('%.3f', r.since))
  redis.call('PEXPIRE', r.key, r.ttl_ms)
end
-- Numbers go to Redis as strings formed once (Lua would format each number argument again, and formatting a
-- double is not cheap).
local est = run.est
local slot_keys = {}
local lease_until = tostring(now_ms + req.lease_ms)
local lease_ttl = tostring(req.lease_ms * 2)
for i, s in ipairs(req.slots) do
  if not skip_slot[i] then
    redis.call('ZADD', s.key, lease_until, req.grant)
    redis.call('PEXPIRE', s.key, lease_ttl)
    slot_keys[#slot_keys + 1] = s.key
  end
end
local running_keys = {}
if holds then
  local until_ms = tostring(now_ms + rn.ttl_ms)
  local keep_ms = rn.ttl_ms * 2
  for _, key in ipairs(rn.holds_in) do
    redis.call('ZADD', key, until_ms, req.grant)
    -- The set outlives its longest holder.
    if redis.call('PTTL', key) < keep_ms then redis.call('PEXPIRE', key, tostring(keep_ms)) end
    running_keys[#running_keys + 1] = key
  end
end
local counting = req.counting_immediate
if run.off_peak then counting = req.counting_off_peak end
local budget_keys = {}
for _, c in ipairs(counting) do
  -- A counter's period is fixed: its expiry is set when it is created (by this first reservation), not renewed.
  if run.estimate > 0 and redis.call('INCRBY', c.key, est) == run.estimate then
    redis.call('EXPIRE', c.key, c.ttl_s)
  end
  budget_keys[#budget_keys + 1] = c.key
end
local off_peak = '0'
if run.off_peak then off_peak = '1' end
-- The day's lists of days and members gain this member with its first admission of the day (every script that
-- starts a usage hash adds to both, atomically with it).
if redis.call('HINCRBY', u.hash, 'admitted', 1) == 1 then
  redis.call('SADD', u.days, u.day)
  redis.call('SADD', u.members, u.member)
end
redis.call('HINCRBY', u.hash, 'reserved', est)
if run.off_peak then redis.call('HINCRBY', u.hash, 'off_peak', 1) end
local now_ms_s = tostring(now_ms)
redis.call('HSET', req.grant_key,
  'status', 'reserved', 'estimate', est, 'off_peak', off_peak,
  'user', rec.user, 'team', rec.team, 'day', rec.day, 'model', rec.model, 'request_id', rec.request_id,
  'budgets', table.concat(budget_keys, '\n'), 'slots', table.concat(slot_keys, '\n'), 'usage', u.hash,
  'created_ms', now_ms_s, 'running', table.concat(running_keys, '\n'), 'slot_ttl', rn.ttl_ms_s)
redis.call('EXPIRE', req.grant_key, req.retention_s)
redis.call('ZADD', req.grants, now_ms_s, req.grant)
return cjson.encode({ run = answer_run, imm_used = imm_used or null, granted = granted })
