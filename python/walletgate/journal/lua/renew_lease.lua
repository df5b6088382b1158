#!lua flags=allow-oom
-- renew_lease: extend a journal shard lease, but only while this writer holds it
-- (compare-and-renew).
--
-- KEYS[1] wg:{journal-lease:<shard>}
-- ARGV[1] writer id, ARGV[2] lease length in milliseconds
-- Returns: 1 when renewed, 0 when the lease is held by another writer or by none.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
