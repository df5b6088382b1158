-- session_put: register (or extend) a session token for one player and currency.
--
-- KEYS[1] wg:{sess:<tenant>:<token>}  the token record (a hash)
-- ARGV[1] player, ARGV[2] currency, ARGV[3] expires_at (UNIX seconds),
-- ARGV[4] keep_s: how long the record is kept (session ttl + idempotency retention, so late
--         settlements can still find it), ARGV[5] session_key ("" when none)
-- Returns: {"ok"} or {"conflict"} when the token already belongs to another player/currency.

local existing = redis.call('HMGET', KEYS[1], 'player', 'currency')
if existing[1] and (existing[1] ~= ARGV[1] or existing[2] ~= ARGV[2]) then
  return {'conflict'}
end
redis.call('HSET', KEYS[1], 'player', ARGV[1], 'currency', ARGV[2], 'expires_at', ARGV[3],
  'session_key', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {'ok'}
