#!lua flags=allow-cross-slot-keys,allow-oom
-- map_keys: map transaction keys to their players (wg:{keymap:<tenant>:<key>}) for records on
-- disk. The first player of a key stays; a later record only lengthens the entry's life.
--
-- KEYS: none; the map keys are named in ARGV and may lie in several slots of this node.
-- ARGV[1] JSON list of [map key, player, expire at (unix seconds)], all keys on this node.
-- Returns: [position (from 1), player already mapped, ...] for keys mapped to another player.

local conflicts = {}
for position, item in ipairs(cjson.decode(ARGV[1])) do
  local previous = redis.call('SET', item[1], item[2], 'NX', 'GET', 'EXAT', item[3])
  if previous then
    redis.call('EXPIREAT', item[1], item[3], 'GT')
    if previous ~= item[2] then
      conflicts[#conflicts + 1] = position
      conflicts[#conflicts + 1] = previous
    end
  end
end
return conflicts
