#!lua flags=allow-cross-slot-keys,allow-oom
-- delete_entries: delete pending-journal stream entries whose records are on disk (XDEL).
--
-- KEYS: none; the streams are named in ARGV and may lie in several slots of this node.
-- ARGV[1] JSON list of [stream, [entry id, ...]], all streams on this node.
-- Returns: the number of entries deleted.

local deleted = 0
for _, group in ipairs(cjson.decode(ARGV[1])) do
  deleted = deleted + redis.call('XDEL', group[1], unpack(group[2]))
end
return deleted
