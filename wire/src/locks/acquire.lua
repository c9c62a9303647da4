-- Acquire: KEYS[1] the exclusive entry, KEYS[2] the readers' sorted set;
-- ARGV[1] the holder's token, ARGV[2] the TTL in ms, ARGV[3] 'x' or 's'.
-- Shared by the native Redis backend and the Spin adapter.
local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[2])
if ARGV[3] == 'x' then
  if redis.call('ZCARD', KEYS[2]) > 0 then return 0 end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
else
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
  redis.call('PEXPIREAT', KEYS[2], redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2])
end
return 1
