-- Publish a native node's heartbeat with where the purge log stands:
-- KEYS[1] the log's counter; ARGV[1] the node's heartbeat channel, ARGV[2]
-- the heartbeat message. Publishes the message, a newline and the number of
-- the newest purge (0: none yet), in one step: a node that hears it on its
-- subscription has heard every purge up to that number on the same one.
-- Answers PUBLISH's count. Native nodes only (Spin nodes read the log).
local seq = redis.call('GET', KEYS[1]) or '0'
return redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\n' .. seq)
