-- session_put: register (or extend) a session token for one player and currency.
--
-- KEYS[1] wg:{sess:<tenant>:<token>}  the token record (a hash)
-- ARGV[1] player, ARGV[2] currency, ARGV[3] expires_at (UNIX seconds),
-- ARGV[4] keep_s: how long the record is kept (session ttl + idempotency retention, so late
--         settlements can still find it), ARGV[5] session_key ("" when none)
-- Returns: {"ok", expires_at} with the expiry in force afterwards, or {"conflict"} when the token
-- already belongs to another player/currency (nothing written).
--
-- Registering again extends a session and never shortens it: a later expiry already stored is
-- kept, and so is a longer keep. Every worker's Wallet v2 session cache relies on that, since it
-- trusts a cached expires_at until its entry ages out.

local existing = redis.call('HMGET', KEYS[1], 'player', 'currency', 'expires_at')
if existing[1] and (existing[1] ~= ARGV[1] or existing[2] ~= ARGV[2]) then
  return {'conflict'}
end
-- UNIX seconds fit a Lua number exactly.
local expires_at = ARGV[3]
if existing[3] and tonumber(existing[3]) > tonumber(expires_at) then
  expires_at = existing[3]
end
redis.call('HSET', KEYS[1], 'player', ARGV[1], 'currency', ARGV[2], 'expires_at', expires_at,
  'session_key', ARGV[5])
-- TTL is -1 for the record just created (no expiry yet), so it always gets one.
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return {'ok', expires_at}
