#!lua flags=allow-oom
-- publish_stats: publish shard figures and add reused-key counts, in one call that runs even
-- when Redis is over maxmemory (allow-oom), like every other write of the journal writer.
--
-- KEYS[1] the shard stats hash, KEYS[2] the reused-key counts hash (same slot).
-- ARGV[1] the stats hash's TTL (ms); ARGV[2] JSON object {shard: stats JSON text, ...};
-- ARGV[3] JSON object {family: count to add, ...}.
-- Returns: 1.

local stats = cjson.decode(ARGV[2])
for shard, value in pairs(stats) do
  redis.call('HSET', KEYS[1], shard, value)
end
if next(stats) ~= nil then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
for family, count in pairs(cjson.decode(ARGV[3])) do
  redis.call('HINCRBY', KEYS[2], family, count)
end
return 1
