-- Credits charged now (refunds netted) for the tasks created at or after a time, from the index of all tasks
-- (members '<created_at>|<task id>', newest first). ARGV[1]: JSON {index, prefix, since (as tasks are stamped),
-- scan (most members read)}. Returns the sum.
local a = cjson.decode(ARGV[1])
local total, read = 0, 0
local max = '+'
while read < a.scan do
  local batch = redis.call('ZREVRANGEBYLEX', a.index, max, '[' .. a.since, 'LIMIT', 0, 500)
  if #batch == 0 then break end
  for _, member in ipairs(batch) do
    read = read + 1
    local id = string.match(member, '|(.*)$')
    total = total + (tonumber(redis.call('HGET', a.prefix .. id, 'credits')) or 0)
    max = '(' .. member
  end
end
return total
