-- midas_session_get: read the session_key registered for (appid, openid), for mp_sig checks.
--
-- KEYS[1] wg:{T:P}:midas_session
-- ARGV none
-- Returns: {session_key, expires_at (UNIX seconds)} or {} when none is registered.

local record = redis.call('HMGET', KEYS[1], 'session_key', 'expires_at')
if not record[1] or not record[2] then
  return {}
end
return record
