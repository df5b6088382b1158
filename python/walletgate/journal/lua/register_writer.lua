#!lua flags=allow-oom
-- register_writer: keep this writer in the registry of live writers and count them, so each
-- takes its share of the shards. A script rather than a pipeline so that it runs when Redis is
-- over maxmemory (allow-oom): the writer must keep draining the pending streams then.
--
-- KEYS[1] the writers registry (a sorted set: writer id -> expiry in ms).
-- ARGV[1] this writer's id, ARGV[2] its expiry (ms), ARGV[3] now (ms), ARGV[4] the key's TTL (ms).
-- Returns: the number of live writers, this one included.

redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('ZCARD', KEYS[1])
