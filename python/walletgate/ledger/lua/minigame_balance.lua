-- minigame_balance: read a MINI.GAME player's balances (get_balance, verify_session).
--
-- KEYS[1] wg:{T:P}:acct
-- ARGV[1..n] configured currencies
-- Returns {} when the player is unknown to the tenant (no account hash), else
-- {balance_units_1, ..., balance_units_n} ("0" for a currency without an account yet).

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
local out = {}
for i = 1, #ARGV do
  out[i] = redis.call('HGET', KEYS[1], 'bal:' .. ARGV[i]) or '0'
end
return out
