-- Read the purges after one: KEYS[1] the purge log, KEYS[2] its counter;
-- ARGV[1] the number of the last purge the reader applied ('' for none),
-- ARGV[2] the most purges to return. Answers {last, gap, message...}: the
-- number of the newest purge, 1 in `gap` when some purges after ARGV[1]
-- are not returned (none applied yet, too many, trimmed from the log, or
-- the log started over), and the messages of the others, newest first.
local top = tonumber(redis.call('GET', KEYS[2]) or '0')
local last = tonumber(ARGV[1])
local out = {string.format('%.0f', top), '0'}
if last == nil or last > top or top - last > tonumber(ARGV[2]) then
  out[2] = '1'
  return out
end
if last == top then return out end
local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', top - last)
local expect = top
for _, entry in ipairs(entries) do
  local fields = entry[2]
  if tonumber(fields[2]) ~= expect then out[2] = '1' end
  expect = expect - 1
  out[#out + 1] = fields[4]
end
if #entries < top - last then out[2] = '1' end
return out
