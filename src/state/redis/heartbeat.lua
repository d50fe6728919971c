-- A replica's heartbeat, atomically: publishes its config version, drops replicas not heard of for `stale_ms`,
-- and answers every live replica's version. It also watches the deployment's epoch key: set once, when Redis
-- first sees the gateway; a replica that knew an epoch and finds none (or another) has seen Redis come back
-- without its data (no persistence, failover to an empty replica).
-- ARGV: epoch key, versions key, replica id, version, the epoch this replica knows ('' for none), a fresh epoch
-- id, stale_ms, now_ms ('' for Redis's TIME). Returns JSON {epoch, lost, versions, now_ms}.
local epoch_key, versions_key, replica, version, known, fresh = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local stale_ms = tonumber(ARGV[7])
local now_ms = tonumber(ARGV[8])
if now_ms == nil then
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local epoch = redis.call('GET', epoch_key)
local lost = false
if not epoch then
  redis.call('SET', epoch_key, fresh)
  epoch = fresh
  lost = known ~= ''
elseif known ~= '' and known ~= epoch then
  lost = true
end

redis.call('HSET', versions_key, replica, version .. ' ' .. now_ms)
local versions = {}
local entries = redis.call('HGETALL', versions_key)
for i = 1, #entries, 2 do
  local v, seen = string.match(entries[i + 1], '^(%S+) (%d+)$')
  if v == nil or now_ms - tonumber(seen) > stale_ms then
    redis.call('HDEL', versions_key, entries[i])
  else
    versions[entries[i]] = v
  end
end
return cjson.encode({ epoch = epoch, lost = lost, versions = versions, now_ms = now_ms })
