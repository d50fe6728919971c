-- `Idempotency-Key` records, one hash per user and key, each call one atomic decision. Fields: `state` (`flight`
-- while a request holds the key, `stored` once its answer is kept), `token` (the holder's claim), `hash` (the
-- body's SHA-256), `until` (ms: the end of the lease, or of the stored answer), and for a stored answer `status`,
-- `headers` (JSON) and `body` (bytes as they were sent). A record whose `until` has passed counts as none (Redis's
-- own expiry only collects it later). Time is Redis's `TIME` unless the caller passes `now_ms` (a test clock).
-- ARGV[1]: JSON {op = claim | abandon | keep, key, token, hash, lease_ms, ttl_ms, now_ms, status, headers};
-- ARGV[2]: the answer's body (keep).
-- claim → {'claimed'} | {'in_flight', ms left} | {'reused'} | {'replay', status, headers, body};
-- abandon → 1 when the claim held the key (now freed), else 0; keep → 1 when stored, 0 when another claim holds
-- the key or an answer is stored already.
local a = cjson.decode(ARGV[1])
local now = a.now_ms
if now == nil or now == cjson.null then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Redis collects a lapsed record this long after its `until` (a test clock may run ahead of Redis's).
local GRACE_MS = 60000
local r = redis.call('HMGET', a.key, 'state', 'token', 'hash', 'until')
local state, token, hash, ends = r[1], r[2], r[3], tonumber(r[4])
local live = state and ends and ends > now
-- The holder's lease may have lapsed: it still holds the key until another claim takes it.
local holds = state == 'flight' and token == a.token

local function put(fields, ms)
  redis.call('DEL', a.key)
  redis.call('HSET', a.key, 'token', a.token, 'hash', a.hash, 'until', string.format('%.0f', now + ms), unpack(fields))
  redis.call('PEXPIRE', a.key, ms + GRACE_MS)
end

if a.op == 'claim' then
  if live then
    if hash ~= a.hash then return { 'reused' } end
    if state == 'stored' then
      local s = redis.call('HMGET', a.key, 'status', 'headers', 'body')
      return { 'replay', s[1], s[2], s[3] }
    end
    return { 'in_flight', string.format('%.0f', ends - now) }
  end
  put({ 'state', 'flight' }, a.lease_ms)
  return { 'claimed' }
elseif a.op == 'abandon' then
  if not holds then return 0 end
  redis.call('DEL', a.key)
  return 1
else
  if live and not holds then return 0 end
  put({ 'state', 'stored', 'status', a.status, 'headers', a.headers, 'body', ARGV[2] }, a.ttl_ms)
  return 1
end
