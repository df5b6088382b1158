-- midas_balance: getbalance's one read: the session_key of (appid, openid) and the account.
--
-- Nothing is written. The balance is read before mp_sig is verified (in Python), which is safe
-- because the script has no effect and the protocol answers nothing of it when mp_sig fails.
--
-- KEYS[1] wg:{T:P}:acct, KEYS[2] wg:{T:P}:midas_session
-- ARGV[1] currency (zone_id, or "sandbox-<zone_id>")
-- Returns: {session_key, expires_at, paid, gen, first_save, save_amt, save_sum, cost_sum,
--           present_sum}; session_key is "" and expires_at "0" when no session is registered;
--           amounts are units strings ("0" when absent); first_save is "1" or "2".

local currency = ARGV[1]
local session = redis.call('HMGET', KEYS[2], 'session_key', 'expires_at')
local account = redis.call('HMGET', KEYS[1],
  'bal:' .. currency, 'gen:' .. currency, 'first_save:' .. currency, 'save_amt:' .. currency,
  'save_sum:' .. currency, 'cost_sum:' .. currency, 'present_sum:' .. currency)
local session_key = session[1] or ''
local expires_at = session[2] or '0'
if session_key == '' then expires_at = '0' end
return {
  session_key, expires_at, account[1] or '0', account[2] or '0', account[3] or '1',
  account[4] or '0', account[5] or '0', account[6] or '0', account[7] or '0',
}
