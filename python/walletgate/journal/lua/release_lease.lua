#!lua flags=allow-oom
-- release_lease: give a journal shard lease back, but only while this writer holds it.
--
-- KEYS[1] wg:{journal-lease:<shard>}
-- ARGV[1] writer id
-- Returns: 1 when released, 0 when the lease is held by another writer or by none.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
