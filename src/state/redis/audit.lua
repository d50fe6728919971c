-- The audit trail: one sorted set of members '<at>|<id>|<entry as JSON>' (all scores 0, so read by lex: by time).
-- ARGV[1]: JSON. op = 'append' {key, at, id, entry, cutoff (older entries go), max (entries kept)}; op = 'list'
-- {key, max ('+' or an exclusive bound), min ('-' or an inclusive bound), kind ('' = any), limit, scan (members read
-- at most, so Redis is never held long)}. Returns '' for append; for list JSON {entries (up to limit + 1, to tell
-- whether there are more), resume ('<at>|<id>' of the last member read when the scan stopped first, else null)}.
local a = cjson.decode(ARGV[1])
if a.op == 'append' then
  redis.call('ZADD', a.key, 0, a.at .. '|' .. a.id .. '|' .. a.entry)
  redis.call('ZREMRANGEBYLEX', a.key, '-', '(' .. a.cutoff)
  local n = redis.call('ZCARD', a.key)
  if n > a.max then redis.call('ZREMRANGEBYRANK', a.key, 0, n - a.max - 1) end
  return ''
end
local out, read, max, last, stopped = {}, 0, a.max, '', false
while #out <= a.limit do
  if read >= a.scan then
    stopped = true
    break
  end
  local batch = redis.call('ZREVRANGEBYLEX', a.key, max, a.min, 'LIMIT', 0, 200)
  if #batch == 0 then break end
  for _, member in ipairs(batch) do
    read = read + 1
    max = '(' .. member
    last = member
    local json = string.match(member, '^[^|]*|[^|]*|(.*)$')
    if json then
      local e = cjson.decode(json)
      if a.kind == '' or e.kind == a.kind then
        out[#out + 1] = json
        if #out > a.limit then break end
      end
    end
  end
end
-- `last`, when the scan stopped before the page filled: where the next page resumes.
local resume = cjson.null
if stopped then resume = string.match(last, '^([^|]*|[^|]*)|') end
return '{"entries":[' .. table.concat(out, ',') .. '],"resume":' .. cjson.encode(resume) .. '}'
