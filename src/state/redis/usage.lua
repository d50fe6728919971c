-- Usage per day for a filter, read in one round trip. ARGV: the days set, the members-of-a-day key prefix, the
-- usage hash key prefix, then the filter: encoded user or '', encoded team or '', first day or '', last day or ''.
-- Members are '<team>:<user>' with ':' and '%' percent-encoded in each part. Returns JSON: a list of days.
local days_key, members_prefix, usage_prefix = ARGV[1], ARGV[2], ARGV[3]
local user, team, from, to = ARGV[4], ARGV[5], ARGV[6], ARGV[7]

local days = redis.call('SMEMBERS', days_key)
table.sort(days)
local out = {}
for _, day in ipairs(days) do
  if (from == '' or day >= from) and (to == '' or day <= to) then
    local row = { day = day, admitted = 0, reserved = 0, settled = 0, released = 0, unknown = 0, refunded = 0,
      off_peak = 0,
      rejected = {} }
    local any = false
    for _, member in ipairs(redis.call('SMEMBERS', members_prefix .. day)) do
      local t, u = string.match(member, '^([^:]*):([^:]*)$')
      if t and (user == '' or u == user) and (team == '' or t == team) then
        any = true
        local fields = redis.call('HGETALL', usage_prefix .. day .. ':' .. member)
        for i = 1, #fields, 2 do
          local name, value = fields[i], tonumber(fields[i + 1])
          local reason = string.match(name, '^rej:(.*)$')
          if reason then
            row.rejected[reason] = (row.rejected[reason] or 0) + value
          elseif row[name] ~= nil then
            row[name] = row[name] + value
          end
        end
      end
    end
    if any then
      if next(row.rejected) == nil then row.rejected = nil end
      out[#out + 1] = row
    end
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)
