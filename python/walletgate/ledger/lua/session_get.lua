-- session_get: read a session token record.
--
-- KEYS[1] wg:{sess:<tenant>:<token>}
-- Returns: {player, currency, expires_at, session_key} or {} when the token is unknown.

local record = redis.call('HMGET', KEYS[1], 'player', 'currency', 'expires_at', 'session_key')
if not record[1] then
  return {}
end
return record
