-- Release: the keys and arguments of acquire.lua (ARGV[2] unused).
if ARGV[3] == 'x' then
  if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
  return 0
end
return redis.call('ZREM', KEYS[2], ARGV[1])
