#!lua flags=allow-oom
-- register_writer: keep this writer in the registry of live writers and count them, so each
-- takes its share of the shards. A script rather than a pipeline so that it runs when Redis is
-- over maxmemory (allow-oom): the writer must keep draining the pending streams then. Times
-- come from Redis's clock, not the hosts': a host whose clock runs ahead must not expire the
-- other writers' entries, nor keep its own alive after it died.
--
-- KEYS[1] the writers registry (a sorted set: writer id -> expiry in ms, Redis time).
-- ARGV[1] this writer's id, ARGV[2] its lease (ms), ARGV[3] the key's TTL (ms).
-- Returns: the number of live writers, this one included.

local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZADD', KEYS[1], now_ms + ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('ZCARD', KEYS[1])
