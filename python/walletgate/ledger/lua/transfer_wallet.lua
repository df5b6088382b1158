-- transfer_wallet: a transfer-wallet player's balance in one currency (getPlayerWallet).
--
-- KEYS[1] wg:{T:P}:acct
-- ARGV[1] currency
-- Returns: {balance_units} ("0" when the currency has no balance yet), or {} when the player is
-- not known (no account hash).

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
return {redis.call('HGET', KEYS[1], 'bal:' .. ARGV[1]) or '0'}
