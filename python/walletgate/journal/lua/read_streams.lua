#!lua flags=allow-cross-slot-keys,no-writes
-- read_streams: the lengths and first entries of many pending-journal streams, in one call.
--
-- KEYS: none; the streams are named in ARGV and may lie in several slots of this node.
-- ARGV[1] the most entries to return in all; ARGV[2] where to start among the streams;
-- ARGV[3] the stream names, separated by newlines, all served by this node.
-- Returns: for each non-empty stream: its position among the names (from 1), its length and its
-- first entries (at least one, so every stream progresses and its oldest entry's age is known);
-- for each stream this node does not serve now: minus its position, 0 and no entries.
--
-- A stream is not served here when its slot is migrating away and the stream is not (or no
-- longer) on this node, or when the slot has moved. Redis refuses such a key, and a refusal by
-- redis.call would abort the whole read of this node; pcall lets the other streams drain, and
-- the caller reloads the slot map.

local budget = tonumber(ARGV[1])
local names = {}
for name in string.gmatch(ARGV[3], '[^\n]+') do
  names[#names + 1] = name
end
local out = {}
local start = tonumber(ARGV[2]) % #names
for step = 0, #names - 1 do
  local position = (start + step) % #names + 1
  local length = redis.pcall('XLEN', names[position])
  if type(length) == 'table' then
    out[#out + 1] = -position
    out[#out + 1] = 0
    out[#out + 1] = {}
  elseif length > 0 then
    local entries = redis.call('XRANGE', names[position], '-', '+', 'COUNT', math.max(budget, 1))
    budget = budget - #entries
    out[#out + 1] = position
    out[#out + 1] = length
    out[#out + 1] = entries
  end
end
return out
