-- midas_session_put: store the session_key of (appid, openid) for mp_sig checks.
--
-- KEYS[1] wg:{T:P}:midas_session
-- ARGV[1] session_key, ARGV[2] expires_at (UNIX seconds), ARGV[3] ttl_s
-- Returns: 1

redis.call('HSET', KEYS[1], 'session_key', ARGV[1], 'expires_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
