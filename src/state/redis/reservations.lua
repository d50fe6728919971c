-- Reservations not settled (open, and `unknown`), and resolving an unknown one.
-- ARGV[1]: JSON {op, grants, prefix, …}.
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

local function view(g)
  local state = 'open'
  if g.status == 'unknown' then state = 'unknown' end
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
if g == nil or g.status ~= 'unknown' then return '' end
local estimate = tonumber(g.estimate)
local amount = 0
if a.how == 'settle' then amount = a.credits end
local delta = amount - estimate
if delta ~= 0 then
  for b in string.gmatch(g.budgets or '', '[^\n]+') do
    if redis.call('INCRBY', b, delta) < 0 then redis.call('SET', b, 0, 'KEEPTTL') end
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
