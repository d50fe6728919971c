-- The reconciler's claim: the tasks a callback made due (in the order they fell due), then unfinished tasks not
-- heard of for `quiet_ms` (-1: none by quiet), oldest first, for the replica holding the reconciler's lease (taken
-- or renewed here), never more than `per_minute` in any 60 s (all replicas together). Claimed tasks count as heard
-- of now. Time is Redis's `TIME` unless the caller passes `now_ms` (a test clock).
-- ARGV[1]: JSON {lease_key, holder, lease_ms, queries_key, live, due, task_prefix, quiet_ms, per_minute, now_ms}.
-- Returns JSON ids.
local a = cjson.decode(ARGV[1])
local now_ms = a.now_ms
if now_ms == nil or now_ms == cjson.null then
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The lease is '<holder>|<until ms>' (Redis's own expiry only collects it later).
local lease = redis.call('GET', a.lease_key)
if lease then
  local holder, until_ms = string.match(lease, '^(.*)|(%d+)$')
  if holder and holder ~= a.holder and tonumber(until_ms) > now_ms then return '[]' end
end
redis.call('SET', a.lease_key, a.holder .. '|' .. (now_ms + a.lease_ms), 'PX', a.lease_ms + 60000)
redis.call('ZREMRANGEBYSCORE', a.queries_key, '-inf', now_ms - 60000)
local room = a.per_minute - redis.call('ZCARD', a.queries_key)
if room <= 0 then return '[]' end

local ids, taken = {}, {}
local function take(id)
  if taken[id] then return end
  taken[id] = true
  if not redis.call('ZSCORE', a.live, id) then return end
  if redis.call('EXISTS', a.task_prefix .. id) == 0 then
    -- Its record expired (state.task_retention_days): nothing left to follow.
    redis.call('ZREM', a.live, id)
    return
  end
  redis.call('ZADD', a.live, now_ms, id)
  redis.call('ZADD', a.queries_key, now_ms, now_ms .. ':' .. id)
  ids[#ids + 1] = id
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', a.due, '-inf', now_ms, 'LIMIT', 0, room)) do
  redis.call('ZREM', a.due, id)
  take(id)
end
if #ids < room and a.quiet_ms >= 0 then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', a.live, '-inf', now_ms - a.quiet_ms, 'LIMIT', 0, room - #ids)) do
    take(id)
  end
end
redis.call('PEXPIRE', a.queries_key, 120000)
if #ids == 0 then return '[]' end
return cjson.encode(ids)
