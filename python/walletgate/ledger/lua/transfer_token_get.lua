-- transfer_token_get: read a transfer-wallet token record.
--
-- KEYS[1] wg:{ttok:<appid>:<token>}
-- Returns: {player, expires_at} or {} when the token is unknown (or expired and evicted).

local record = redis.call('HMGET', KEYS[1], 'player', 'expires_at')
if not record[1] then
  return {}
end
return record
