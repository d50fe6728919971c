-- Reservations not settled (open, and `unknown`), and resolving an unknown one.
-- ARGV[1]: JSON {op, grants, prefix, stale_ms, now_ms, …}. A `reserved` grant older than `stale_ms` (the in-flight
-- lease: its replica stopped mid-request) counts as `unknown`.
-- op = 'list': every grant of the index still held, oldest first (JSON list; lapsed ones leave the index).
-- op = 'resolve' {id, how (settle | release), credits}: an `unknown` grant settles (its budgets and usage day move
-- from the estimate to the credits) or is released, once. Returns '' when `id` names no unknown grant.
local a = cjson.decode(ARGV[1])

local function read(id)
  local fields = redis.call('HGETALL', a.prefix .. id)
  if #fields == 0 then return nil end
  local g = { id = id }
  for i = 1, #fields, 2 do g[fields[i]] = fields[i + 1] end
  return g
end

local now_ms = a.now_ms
if now_ms == nil or now_ms == cjson.null then
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function unknown(g)
  return g.status == 'unknown' or (g.status == 'reserved' and (tonumber(g.created_ms) or 0) + a.stale_ms < now_ms)
end

local function view(g)
  local state = 'open'
  if unknown(g) then state = 'unknown' end
  return { id = g.id, request_id = g.request_id or '', user = g.user, team = g.team, model = g.model,
    off_peak = g.off_peak == '1', estimate = tonumber(g.estimate), state = state, created_ms = tonumber(g.created_ms) }
end

if a.op == 'list' then
  local out = {}
  for _, id in ipairs(redis.call('ZRANGE', a.grants, 0, 999)) do
    local g = read(id)
    if g == nil then
      redis.call('ZREM', a.grants, id)
    else
      out[#out + 1] = view(g)
    end
  end
  if #out == 0 then return '[]' end
  return cjson.encode(out)
end

local g = read(a.id)
if g == nil or not unknown(g) then return '' end
-- A stale reserved grant still holds its slots' leases until they lapse; they are its replica's, which is gone.
if g.status == 'reserved' then
  for slot in string.gmatch(g.slots or '', '[^\n]+') do redis.call('ZREM', slot, a.id) end
  redis.call('HINCRBY', g.usage, 'reserved', -tonumber(g.estimate))
  redis.call('HINCRBY', g.usage, 'unknown', tonumber(g.estimate))
end
-- Resolved: whatever happened, nothing more will be heard of it; its running-task slot (if any) is freed.
for key in string.gmatch(g.running or '', '[^\n]+') do redis.call('ZREM', key, a.id) end
local estimate = tonumber(g.estimate)
local amount = 0
if a.how == 'settle' then amount = a.credits end
local delta = amount - estimate
if delta ~= 0 then
  for b in string.gmatch(g.budgets or '', '[^\n]+') do
    if redis.call('EXISTS', b) == 1 and redis.call('INCRBY', b, delta) < 0 then
      redis.call('SET', b, 0, 'KEEPTTL')
    end
  end
end
redis.call('HINCRBY', g.usage, 'unknown', -estimate)
if a.how == 'settle' then
  redis.call('HINCRBY', g.usage, 'settled', amount)
else
  redis.call('HINCRBY', g.usage, 'released', estimate)
end
redis.call('DEL', a.prefix .. a.id)
redis.call('ZREM', a.grants, a.id)
return cjson.encode(view(g))
