-- transfer_token_put: store a new transfer-wallet token (issued by authorize).
--
-- KEYS[1] wg:{ttok:<appid>:<token>}  the token record (a hash)
-- ARGV[1] player (uname), ARGV[2] expires_at (UNIX seconds), ARGV[3] ttl_s
-- Returns: 1, or 0 when the token already exists (the caller draws another one).

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'player', ARGV[1], 'expires_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
