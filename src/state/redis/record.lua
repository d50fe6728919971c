-- A request a replica admitted without Redis (`fail_open`, spooled) and how it ended, recorded atomically and at
-- most once per spool id: its credits count against every budget it would have counted against, usage shows it,
-- and its task gets its owner (unless the task id already has one). No limit is checked: the request already ran.
-- A replica whose admission timed out may have had it run after all (the script was sent before Redis hung):
-- then the grant exists, and the caller settles it with `finish.lua` instead.
-- ARGV[1]: JSON built by `state/redis/mod.rs`. Returns 1 (recorded), 0 (recorded before) or 2 (Redis admitted it
-- itself: finish that grant).
local r = cjson.decode(ARGV[1])
if not redis.call('SET', r.once_key, '1', 'NX', 'EX', r.retention_s) then return 0 end
if redis.call('EXISTS', r.grant_key) == 1 then return 2 end

for _, c in ipairs(r.counting) do
  if r.amount > 0 then redis.call('INCRBY', c.key, r.amount) end
  redis.call('EXPIRE', c.key, c.ttl_s)
end

local u = r.usage
redis.call('HINCRBY', u.hash, 'admitted', 1)
if r.off_peak then redis.call('HINCRBY', u.hash, 'off_peak', 1) end
if r.kind == 'charged' then
  redis.call('HINCRBY', u.hash, 'settled', r.amount)
elseif r.kind == 'released' then
  redis.call('HINCRBY', u.hash, 'released', r.estimate)
else
  redis.call('HINCRBY', u.hash, 'unknown', r.estimate)
end
redis.call('SADD', u.days, u.day)
redis.call('SADD', u.members, u.member)

-- Unknown (timed out after sending): kept as an unknown grant, listed and resolved like any other.
if r.kind == 'unknown' then
  local budgets = {}
  for _, c in ipairs(r.counting) do budgets[#budgets + 1] = c.key end
  local off_peak = 0
  if r.off_peak then off_peak = 1 end
  redis.call('HSET', r.grant_key, 'status', 'unknown', 'estimate', r.estimate, 'off_peak', off_peak, 'user', r.user,
    'team', r.team, 'model', r.model, 'request_id', r.request_id, 'budgets', table.concat(budgets, '\n'),
    'slots', '', 'usage', u.hash, 'created_ms', r.created_ms)
  redis.call('EXPIRE', r.grant_key, r.retention_s)
  redis.call('ZADD', r.grants, r.created_ms, r.once_key_id)
end

if r.task_key ~= '' and redis.call('EXISTS', r.task_key) == 0 then
  local off_peak = 0
  if r.off_peak then off_peak = 1 end
  local t = r.task
  local budgets = {}
  for _, c in ipairs(r.counting) do budgets[#budgets + 1] = c.key end
  local ended = ''
  if t.terminal then ended = r.created_at end
  redis.call('HSET', r.task_key, 'user', r.user, 'team', r.team, 'credits', r.amount, 'off_peak', off_peak,
    'model', r.model, 'created_at', r.created_at, 'request_id', r.request_id, 'estimate', r.estimate,
    'refunded', 0, 'state', t.state, 'callback_url', t.callback_url, 'updated_at', r.created_at,
    'ended_at', ended, 'budgets', table.concat(budgets, '\n'), 'usage', u.hash, 'relay', '')
  redis.call('EXPIRE', r.task_key, r.retention_s)
  local member = r.created_at .. '|' .. t.task_id
  local function enc(s) return (string.gsub(string.gsub(string.gsub(s, '%%', '%%25'), ':', '%%3A'), '\n', '%%0A')) end
  local lists = { t.list_prefix .. 'a', t.list_prefix .. 't:' .. enc(r.team), t.list_prefix .. 'u:' .. enc(r.user) }
  for _, index in ipairs(lists) do
    redis.call('ZADD', index, 0, member)
    redis.call('EXPIRE', index, r.retention_s)
  end
  if not t.terminal then redis.call('ZADD', t.live, 0, t.task_id) end
end
return 1
