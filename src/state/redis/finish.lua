-- How a granted request ends, atomically: its slots are freed and its reservation settles (charged: Vidu's
-- credits; released: nothing; unknown: the estimate stays, for reconciliation). At most once per grant: a grant
-- that is not `reserved` any more, or that this deployment never made, changes nothing.
-- ARGV: grant key, grant id, kind (charged | released | unknown), credits, task key ('' for none), task fields as
-- JSON, retention in seconds. Returns 0 (nothing to do), 1 (settled) or 2 (settled; the task id already had an
-- owner, who keeps it).
local grant_key, grant_id, kind = ARGV[1], ARGV[2], ARGV[3]
local credits = tonumber(ARGV[4])
local task_key, task, retention = ARGV[5], ARGV[6], tonumber(ARGV[7])

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
    local t = cjson.decode(task)
    redis.call('HSET', task_key, 'user', g.user, 'team', g.team, 'credits', amount, 'off_peak', g.off_peak,
      'model', g.model, 'created_at', t.created_at)
    redis.call('EXPIRE', task_key, retention)
  end
end

if kind == 'unknown' then
  redis.call('HSET', grant_key, 'status', 'unknown', 'slots', '')
else
  redis.call('DEL', grant_key)
end
return answer
