-- Credits charged now (refunds netted) for the tasks created at or after a time, from the index of all tasks
-- (members '<created_at>|<task id>', newest first), one bounded slice per call so that Redis is never held long.
-- ARGV[1]: JSON {index, prefix, since (as tasks are stamped), from ('+' or the last member of the previous slice,
-- exclusive), scan (members per slice)}. Returns JSON {total, last, done}.
local a = cjson.decode(ARGV[1])
local function enc(s) return (string.gsub(string.gsub(string.gsub(s, '%%', '%%25'), ':', '%%3A'), '\n', '%%0A')) end
local max = '+'
if a.from ~= '+' then max = '(' .. a.from end
local batch = redis.call('ZREVRANGEBYLEX', a.index, max, '[' .. a.since, 'LIMIT', 0, a.scan)
local total = 0
for _, member in ipairs(batch) do
  local id = string.match(member, '|(.*)$')
  total = total + (tonumber(redis.call('HGET', a.prefix .. enc(id), 'credits')) or 0)
end
local last = ''
if #batch > 0 then last = batch[#batch] end
return cjson.encode({ total = total, last = last, done = #batch < a.scan })
