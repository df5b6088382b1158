-- wallet_v2_balance: read one account balance for Wallet v2 (`credit`, and the `credit` field of
-- error responses). Read-only: writes nothing and appends no journal record.
--
-- KEYS[1] wg:{T:P}:acct   the player's account hash
-- ARGV[1] currency
-- Returns: {known, balance_units}
--   known "1" when the account hash exists (the player is known), else "0" (balance "0").

local currency = ARGV[1]
local account_key = KEYS[1]

if redis.call('EXISTS', account_key) == 0 then
  return {'0', '0'}
end
return {'1', redis.call('HGET', account_key, 'bal:' .. currency) or '0'}
