#!lua flags=allow-cross-slot-keys,no-writes
-- stream_lengths: the lengths of the non-empty pending-journal streams among many, in one call.
--
-- KEYS: none; the streams are named in ARGV and may lie in several slots of this node.
-- ARGV[1] the stream names, separated by newlines, all served by this node.
-- Returns: for each non-empty stream: its position among the names (from 1) and its length.

local out = {}
local position = 0
for name in string.gmatch(ARGV[1], '[^\n]+') do
  position = position + 1
  local length = redis.call('XLEN', name)
  if length > 0 then
    out[#out + 1] = position
    out[#out + 1] = length
  end
end
return out
