-- The running-task slots held now, for reports and metrics: holders whose time ran out are dropped, then each
-- holder (a grant in flight or unknown, or a task) is looked up for its user and team.
-- ARGV[1]: JSON {global, grant_prefix, task_prefix, now_ms (or null: Redis's TIME)}. Returns JSON [[user, team], …].
local a = cjson.decode(ARGV[1])
local now_ms = a.now_ms
if now_ms == nil or now_ms == cjson.null then
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
redis.call('ZREMRANGEBYSCORE', a.global, '-inf', now_ms)
local function enc(s) return (string.gsub(string.gsub(string.gsub(s, '%%', '%%25'), ':', '%%3A'), '\n', '%%0A')) end
local out = {}
for _, m in ipairs(redis.call('ZRANGE', a.global, 0, -1)) do
  local h = redis.call('HMGET', a.grant_prefix .. m, 'user', 'team')
  if not h[1] then h = redis.call('HMGET', a.task_prefix .. enc(m), 'user', 'team') end
  out[#out + 1] = { h[1] or '', h[2] or '' }
end
if #out == 0 then return '[]' end
return cjson.encode(out)
