-- A page of tasks, newest first, from one index (all, a team's, a user's: members '<created_at>|<task id>').
-- ARGV[1]: JSON {index, prefix, after ('' = from the newest), limit, state ('' = any), scan}. Reads at most `scan`
-- members; returns JSON {tasks = [hash fields…], last = the last member looked at, more = bool}. Lapsed members leave the
-- index.
local a = cjson.decode(ARGV[1])
local out = {}
local max = '+'
if a.after ~= '' then max = '(' .. a.after end
local read, last, more = 0, '', false
while read < a.scan do
  local batch = redis.call('ZREVRANGEBYLEX', a.index, max, '-', 'LIMIT', 0, 100)
  if #batch == 0 then break end
  for _, member in ipairs(batch) do
    read = read + 1
    local id = string.match(member, '|(.*)$')
    local fields = redis.call('HGETALL', a.prefix .. id)
    if #fields == 0 then
      redis.call('ZREM', a.index, member)
    else
      local t = { task_id = id }
      for i = 1, #fields, 2 do t[fields[i]] = fields[i + 1] end
      t.budgets, t.usage, t.running, t.slot_ttl = nil, nil, nil, nil
      if a.state == '' or t.state == a.state then
        if #out == a.limit then
          more = true
          break
        end
        out[#out + 1] = t
      end
    end
    -- Everything up to here has been looked at: the next page starts after it.
    last = member
    if read >= a.scan then break end
  end
  if more then break end
  max = '(' .. last
end
if not more and read >= a.scan then more = true end
return cjson.encode({ tasks = out, last = last, more = more })
