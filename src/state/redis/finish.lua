-- How a granted request ends, atomically: its slots are freed and its reservation settles (charged: Vidu's
-- credits; released: nothing; unknown: the estimate stays, for reconciliation). At most once per grant: a grant
-- that is not `reserved` any more, or that this deployment never made, changes nothing.
-- ARGV: grant key, grant id, kind (charged | released | unknown), credits, task key ('' for none), retention in
-- seconds, the index of open and unknown grants, now (ms; '' = Redis's time), then, with a task key, the task:
-- id, state, terminal ('1'/'0'), callback url, now (timestamp), now (ms), list prefix, cutoff, prune ('1'/'0'),
-- the set of live tasks (flat arguments, not JSON: cheaper for Redis to read). Returns 0 (nothing to do),
-- 1 (settled) or 2 (settled; the task id already had an owner, who keeps it).
local grant_key, grant_id, kind = ARGV[1], ARGV[2], ARGV[3]
local credits = tonumber(ARGV[4])
local task_key, retention = ARGV[5], ARGV[6]
local t_grants = ARGV[7] or ''
-- Running-task slots keep Redis's time (the test clock's when given), as admission does.
local now_ms = tonumber(ARGV[8])
if not now_ms then
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local fields = redis.call('HGETALL', grant_key)
if #fields == 0 then return 0 end
local g = {}
for i = 1, #fields, 2 do g[fields[i]] = fields[i + 1] end
if g.status ~= 'reserved' then return 0 end

local function lines(s)
  local out = {}
  if s == nil or s == '' then return out end
  for line in string.gmatch(s, '[^\n]+') do out[#out + 1] = line end
  return out
end

for _, slot in ipairs(lines(g.slots)) do
  redis.call('ZREM', slot, grant_id)
end
-- The running-task slot (if the grant holds one) passes to the task Vidu created, stays while the outcome is
-- unknown (the task may exist), and is freed otherwise.
local running = lines(g.running)
local slot_ttl = tonumber(g.slot_ttl) or 0
local function keep_running(member)
  for _, key in ipairs(running) do
    -- A holder whose time ran out is gone from every scope alike, not renewed in some.
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
    if redis.call('ZREM', key, grant_id) == 1 then
      redis.call('ZADD', key, now_ms + slot_ttl, member)
      if redis.call('PTTL', key) < slot_ttl * 2 then redis.call('PEXPIRE', key, slot_ttl * 2) end
    end
  end
end
local slot_kept = false

local estimate = tonumber(g.estimate)
local amount = estimate
if kind == 'charged' then amount = credits elseif kind == 'released' then amount = 0 end
local delta = amount - estimate
if delta ~= 0 then
  for _, b in ipairs(lines(g.budgets)) do
    if redis.call('INCRBY', b, delta) < 0 then redis.call('SET', b, 0, 'KEEPTTL') end
  end
end

redis.call('HINCRBY', g.usage, 'reserved', -estimate)
if kind == 'charged' then
  redis.call('HINCRBY', g.usage, 'settled', credits)
elseif kind == 'released' then
  redis.call('HINCRBY', g.usage, 'released', estimate)
else
  redis.call('HINCRBY', g.usage, 'unknown', estimate)
end

local answer = 1
if task_key ~= '' then
  if redis.call('EXISTS', task_key) == 1 then
    answer = 2
  else
    -- The task's lifecycle starts: its record (with the budgets and usage its money moves in, the periods it was
    -- created in), the indexes that list it, and the set of unfinished tasks the reconciler follows.
    local t = { task_id = ARGV[9], state = ARGV[10], terminal = ARGV[11] == '1', callback_url = ARGV[12],
      now = ARGV[13], now_ms = ARGV[14], list_prefix = ARGV[15], cutoff = ARGV[16], prune = ARGV[17] == '1',
      live = ARGV[18] }
    local ended = ''
    if t.terminal then ended = t.now end
    redis.call('HSET', task_key, 'user', g.user, 'team', g.team, 'credits', amount, 'off_peak', g.off_peak,
      'model', g.model, 'created_at', t.now, 'request_id', g.request_id or '', 'estimate', estimate,
      'refunded', 0, 'state', t.state, 'callback_url', t.callback_url, 'updated_at', t.now, 'ended_at', ended,
      'budgets', g.budgets or '', 'usage', g.usage or '', 'relay', '')
    if #running > 0 and not t.terminal then
      keep_running(t.task_id)
      redis.call('HSET', task_key, 'running', g.running, 'slot_ttl', slot_ttl)
      slot_kept = true
    end
    redis.call('EXPIRE', task_key, retention)
    local member = t.now .. '|' .. t.task_id
    local function enc(s) return (string.gsub(string.gsub(string.gsub(s, '%%', '%%25'), ':', '%%3A'), '\n', '%%0A')) end
    local lists = { t.list_prefix .. 'a', t.list_prefix .. 't:' .. enc(g.team), t.list_prefix .. 'u:' .. enc(g.user) }
    for _, index in ipairs(lists) do
      redis.call('ZADD', index, 0, member)
      -- Members past the retention leave the list now and then (the caller asks about 1 create in 32).
      if t.prune then redis.call('ZREMRANGEBYLEX', index, '-', '(' .. t.cutoff) end
      redis.call('EXPIRE', index, retention)
    end
    if not t.terminal then redis.call('ZADD', t.live, t.now_ms, t.task_id) end
  end
end

if kind == 'unknown' then
  keep_running(grant_id)
  slot_kept = true
end
if not slot_kept then
  for _, key in ipairs(running) do redis.call('ZREM', key, grant_id) end
end

if kind ~= 'unknown' and t_grants ~= '' then redis.call('ZREM', t_grants, grant_id) end
if kind == 'unknown' then
  redis.call('HSET', grant_key, 'status', 'unknown', 'slots', '')
else
  redis.call('DEL', grant_key)
end
return answer
