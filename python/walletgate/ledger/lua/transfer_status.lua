-- transfer_status: read a transfer's stored outcome (or pending marker) for transfer/status.
--
-- KEYS[1] wg:{T:P}:tx:<tx_id> (under the token's player, so another player's tx_id is unknown)
-- Returns: {state, currency, amount_units} or {} when there is no record (unknown, expired
-- pending marker, or past retention). state is "applied" | "rejected" | "pending".

local record = redis.call('HMGET', KEYS[1], 'state', 'currency', 'amount')
if not record[1] or not record[3] then
  return {}
end
return record
