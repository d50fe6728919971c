-- The reconciler's claim: unfinished tasks not heard of for `quiet_ms`, oldest first, for the replica holding the
-- reconciler's lease (taken or renewed here), never more than `per_minute` in any 60 s (all replicas together).
-- Claimed tasks count as heard of now.
-- ARGV[1]: JSON {lease_key, holder, lease_ms, queries_key, live, task_prefix, quiet_ms, per_minute, now_ms}.
-- Returns JSON ids.
local a = cjson.decode(ARGV[1])
-- The lease is '<holder>|<until ms>', judged by the caller's clock (Redis's own expiry only collects it later).
local lease = redis.call('GET', a.lease_key)
if lease then
  local holder, until_ms = string.match(lease, '^(.*)|(%d+)$')
  if holder and holder ~= a.holder and tonumber(until_ms) > a.now_ms then return '[]' end
end
redis.call('SET', a.lease_key, a.holder .. '|' .. (a.now_ms + a.lease_ms), 'PX', a.lease_ms + 60000)
redis.call('ZREMRANGEBYSCORE', a.queries_key, '-inf', a.now_ms - 60000)
local room = a.per_minute - redis.call('ZCARD', a.queries_key)
if room <= 0 then return '[]' end
local candidates = redis.call('ZRANGEBYSCORE', a.live, '-inf', a.now_ms - a.quiet_ms, 'LIMIT', 0, room)
local ids = {}
for _, id in ipairs(candidates) do
  if redis.call('EXISTS', a.task_prefix .. id) == 0 then
    -- Its record expired (state.task_retention_days): nothing left to follow.
    redis.call('ZREM', a.live, id)
  else
    redis.call('ZADD', a.live, a.now_ms, id)
    redis.call('ZADD', a.queries_key, a.now_ms, a.now_ms .. ':' .. id)
    ids[#ids + 1] = id
  end
end
redis.call('PEXPIRE', a.queries_key, 120000)
if #ids == 0 then return '[]' end
return cjson.encode(ids)
