#!lua flags=allow-cross-slot-keys,no-writes
-- count_records: how many records many pending-journal streams hold in all, and since when.
--
-- KEYS: none; the streams are named in ARGV and may lie in several slots of this node.
-- ARGV[1] JSON list of [stream name], all served by this node.
-- Returns: {records, streams not served here, the oldest record's id time in ms or 0 when there
-- is none}. A stream whose slot is migrating away or has moved is refused by Redis; pcall skips
-- it (counted apart) instead of failing the whole count.

local records = 0
local not_served = 0
local oldest_ms = 0
for _, item in ipairs(cjson.decode(ARGV[1])) do
  local length = redis.pcall('XLEN', item[1])
  if type(length) == 'table' then
    not_served = not_served + 1
  elseif length > 0 then
    records = records + length
    local first = redis.call('XRANGE', item[1], '-', '+', 'COUNT', 1)[1][1]
    local first_ms = tonumber(string.match(first, '^(%d+)-'))
    if oldest_ms == 0 or first_ms < oldest_ms then oldest_ms = first_ms end
  end
end
return {records, not_served, oldest_ms}
