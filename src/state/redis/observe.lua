-- A task state learned from Vidu, applied atomically (the rules of `state/lifecycle.rs`): an ended task never
-- changes; success charges the final credits, failed and cancelled give back everything charged — to the budgets
-- and the usage day the task was created in; a relay of the change is queued when the task has a callback_url.
-- The task counts as heard of now either way.
-- ARGV[1]: JSON {task_key, task_id, state, credits (or null), now, now_ms, body, live, due, outbox: {key, id, due}}.
-- Returns '' (no such task, or nothing changed) or JSON {from, task fields…, refunded_now, adjusted, relay_queued}.
local a = cjson.decode(ARGV[1])
local fields = redis.call('HGETALL', a.task_key)
if #fields == 0 then return '' end
local t = {}
for i = 1, #fields, 2 do t[fields[i]] = fields[i + 1] end
local terminal = { success = true, failed = true, cancelled = true }
-- A record written before tasks were followed has no state: it is taken as ended, as the replicas read it.
if t.state == nil then return '' end

redis.call('ZREM', a.due, a.task_id)
if not terminal[t.state] then redis.call('ZADD', a.live, 'XX', a.now_ms, a.task_id) end
-- News of a task keeps its running-task slot (if it holds one); its end frees it. Redis's time (the test clock's
-- when given), as admission's; a holder whose time ran out is gone from every scope alike, not renewed in some.
local slot_ttl = tonumber(t.slot_ttl) or 0
if (t.running or '') ~= '' then
  local slot_now = a.slot_now_ms
  if slot_now == nil or slot_now == cjson.null then
    local tm = redis.call('TIME')
    slot_now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
  end
  for key in string.gmatch(t.running, '[^\n]+') do
    redis.call('ZREMRANGEBYSCORE', key, '-inf', slot_now)
    if terminal[a.state] then
      redis.call('ZREM', key, a.task_id)
    elseif redis.call('ZADD', key, 'XX', 'CH', slot_now + slot_ttl, a.task_id) == 1
      and redis.call('PTTL', key) < slot_ttl * 2 then
      redis.call('PEXPIRE', key, slot_ttl * 2)
    end
  end
end
if terminal[t.state] or t.state == a.state then return '' end

local charged = tonumber(t.credits) or 0
local refunded_now, new_charged = 0, charged
if a.state == 'success' then
  if a.credits ~= cjson.null and a.credits ~= nil then new_charged = a.credits end
elseif a.state == 'failed' or a.state == 'cancelled' then
  refunded_now, new_charged = charged, 0
end
local delta = new_charged - charged

if delta ~= 0 then
  -- A budget whose period is over (its counter expired) is not brought back.
  for b in string.gmatch(t.budgets or '', '[^\n]+') do
    if redis.call('EXISTS', b) == 1 and redis.call('INCRBY', b, delta) < 0 then
      redis.call('SET', b, 0, 'KEEPTTL')
    end
  end
  if (t.usage or '') ~= '' then
    redis.call('HINCRBY', t.usage, 'settled', delta)
    if refunded_now > 0 then redis.call('HINCRBY', t.usage, 'refunded', refunded_now) end
  end
end

local from = t.state
local refunded = (tonumber(t.refunded) or 0) + refunded_now
local ended = t.ended_at or ''
if terminal[a.state] then
  ended = a.now
  redis.call('ZREM', a.live, a.task_id)
end
local relay = t.relay or ''
local queued = false
if (t.callback_url or '') ~= '' then
  redis.call('HSET', a.outbox.key, 'task_id', a.task_id, 'team', t.team, 'url', t.callback_url, 'body', a.body,
    'attempts', 0, 'created_ms', a.now_ms)
  redis.call('ZADD', a.outbox.due, a.now_ms, a.outbox.id)
  -- The task's relays, in the order they must arrive.
  redis.call('RPUSH', a.outbox.order, a.outbox.id)
  relay, queued = 'pending', true
end
redis.call('HSET', a.task_key, 'state', a.state, 'credits', new_charged, 'refunded', refunded, 'updated_at', a.now,
  'ended_at', ended, 'relay', relay)

t.state, t.credits, t.refunded, t.updated_at, t.ended_at, t.relay = a.state, new_charged, refunded, a.now, ended, relay
t.budgets, t.usage, t.running, t.slot_ttl = nil, nil, nil, nil
local adjusted = 0
if a.state == 'success' then adjusted = delta end
return cjson.encode({ from = from, task = t, refunded_now = refunded_now, adjusted = adjusted, relay_queued = queued })
