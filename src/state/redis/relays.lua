-- The relay outbox. ARGV[1]: JSON {op, due, prefix, now_ms, …}.
-- op = 'claim' {limit, lease_ms, order_prefix}: jobs due now, oldest first, each leased (due again after lease_ms),
-- only the first job of each task (`<order_prefix><task id>`, a list), so a task's relays arrive in order; JSON list.
-- op = 'done' {id, task_key, outcome (delivered | retry | gave_up), after_ms, attempts}: records an attempt.
local a = cjson.decode(ARGV[1])
if a.op == 'claim' then
  local ids = redis.call('ZRANGEBYSCORE', a.due, '-inf', a.now_ms, 'LIMIT', 0, a.limit)
  local out = {}
  for _, id in ipairs(ids) do
    local fields = redis.call('HGETALL', a.prefix .. id)
    if #fields == 0 then
      redis.call('ZREM', a.due, id)
    else
      local j = { id = id }
      for i = 1, #fields, 2 do j[fields[i]] = fields[i + 1] end
      local head = redis.call('LINDEX', a.order_prefix .. j.task_id, 0)
      if head == false or head == id then
        redis.call('ZADD', a.due, a.now_ms + a.lease_ms, id)
        j.attempts = tonumber(j.attempts) or 0
        j.created_ms = tonumber(j.created_ms) or 0
        out[#out + 1] = j
      end
    end
  end
  if #out == 0 then return '[]' end
  return cjson.encode(out)
end

local key = a.prefix .. a.id
if redis.call('EXISTS', key) == 0 then return 0 end
if a.outcome == 'retry' then
  redis.call('HSET', key, 'attempts', a.attempts)
  redis.call('ZADD', a.due, a.now_ms + a.after_ms, a.id)
  return 1
end
redis.call('DEL', key)
redis.call('ZREM', a.due, a.id)
redis.call('LREM', a.order_prefix .. a.task_id, 1, a.id)
if redis.call('EXISTS', a.task_key) == 1 then
  local status = 'delivered'
  if a.outcome == 'gave_up' then status = 'failed' end
  redis.call('HSET', a.task_key, 'relay', status)
end
return 1
