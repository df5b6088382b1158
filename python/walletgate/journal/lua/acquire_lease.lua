#!lua flags=allow-oom
-- acquire_lease: take a free journal shard lease, or keep one this writer still holds (after it
-- stopped trusting it in time).
--
-- KEYS[1] wg:{journal-lease:<shard>}
-- ARGV[1] writer id, ARGV[2] lease length in milliseconds
-- Returns: 1 when this writer now holds the lease (taken or extended), 0 when another one does.

local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
