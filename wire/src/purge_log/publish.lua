-- Publish a purge: KEYS[1] the purge log (a stream), KEYS[2] its counter;
-- ARGV[1] the channel, ARGV[2] the purge message, ARGV[3] how long the log
-- keeps an entry, ms. Numbers the purge, appends it to the log (trimming
-- entries older than ARGV[3]) and publishes it; answers PUBLISH's count.
-- A new counter starts at the time in µs (not ms: a log lost and started
-- again within the millisecond of its first purge would reuse numbers), so
-- numbers never go back when Redis loses the log: a reader ahead of a lost
-- log is told of the gap.
-- (Numbers stay below 2^53, exact in Lua; written with %.0f, never %g.)
-- Shared by the native Redis channel and the Spin adapter.
local t = redis.call('TIME') local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(us / 1000)
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], string.format('%.0f', us))
end
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], 'MINID', '~', string.format('%.0f', now - tonumber(ARGV[3])), '*',
  'seq', string.format('%.0f', seq), 'm', ARGV[2])
return redis.call('PUBLISH', ARGV[1], ARGV[2])
