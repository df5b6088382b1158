-- midas_cancelpay: roll back an applied pay, restoring each part exactly as it was taken.
--
-- The cancel is kept on the pay's own record (fields cancelled, cancel_seq, cancelled_us); no
-- tombstone is ever written. A pay is "matching" when its record exists under this player's tag
-- (appid, openid) with op "pay", state "applied", the same protocol (environment) and the same
-- currency (zone).
--
-- KEYS[1] wg:{T:P}:acct, KEYS[2] journal stream (prelude), KEYS[3] wg:{T:P}:tx:<bill_no>,
-- KEYS[4] wg:{T:P}:midas_session
-- ARGV[1..8] prelude common arguments (key = the pay's bill_no)
-- ARGV[9]  session digest: sha1 hex of the session_key Python verified mp_sig with
-- Returns: {outcome, code, paid_units, gen_units, used_gen_units}
--   "applied"   code "0"; the parts after the rollback and the gifted part given back
--   "not_found" code "90000": no matching pay (never seen, a present, a failed pay, expired,
--               another environment or zone); nothing written
--   "repeat"    code "90015": already rolled back; nothing written
--   "session"   the session_key is gone, expired or not the one verified; nothing written
--   "overflow"  a part, or the balance (paid plus gifted), would leave int64; nothing written
-- Journal: kind "cancelpay" (delta/bal = paid part, extra gdelta/gbal = gifted part).
-- resend: unsafe. A second run answers "repeat" (90015), not the rollback the first made, so a
-- call whose connection broke in flight is answered "busy" instead of being sent again.

local currency = ARGV[3]
local protocol = ARGV[4]
local retention_s = ARGV[8]
local session_digest = ARGV[9]
local acct_key = KEYS[1]
local tx_key = KEYS[3]
local session_record_key = KEYS[4]
local paid_field = 'bal:' .. currency
local gen_field = 'gen:' .. currency
local cost_field = 'cost_sum:' .. currency

local session = redis.call('HMGET', session_record_key, 'session_key', 'expires_at')
if not session[1] or not session[2] or redis.sha1hex(session[1]) ~= session_digest
    or tonumber(session[2]) <= tonumber(redis.call('TIME')[1]) then
  return {'session', '0', '0', '0', '0'}
end

local pay = redis.call('HMGET', tx_key,
  'fp', 'state', 'op', 'protocol', 'currency', 'amt', 'used_gen', 'paid_used', 'cancelled')
if not pay[1] or pay[2] ~= 'applied' or pay[3] ~= 'pay' or pay[4] ~= protocol
    or pay[5] ~= currency or not pay[6] or not pay[7] or not pay[8] then
  return {'not_found', '90000', '0', '0', '0'}
end
if pay[9] == '1' then
  return {'repeat', '90015', '0', '0', '0'}
end
local amount_units = pay[6]
local used_gen = pay[7]
local paid_used = pay[8]

-- The balance after the rollback must stay an int64 (presents may have filled it since).
local parts = redis.call('HMGET', acct_key, paid_field, gen_field)
if not wg_total_fits({parts[1] or '0', parts[2] or '0', paid_used, used_gen}) then
  return {'overflow', '0', '0', '0', '0'}
end

-- Restore both parts and cost_sum; if any would leave int64, undo what was done (the values are
-- then exactly those read) and write nothing.
local gen_after = wg_add(acct_key, gen_field, used_gen)
if not gen_after then
  WG_FX = {}
  return {'overflow', '0', '0', '0', '0'}
end
local paid_after = wg_add(acct_key, paid_field, paid_used)
if not paid_after then
  wg_add(acct_key, gen_field, wg_negate(used_gen))
  WG_FX = {}
  return {'overflow', '0', '0', '0', '0'}
end
if not wg_add(acct_key, cost_field, wg_negate(amount_units)) then
  wg_add(acct_key, gen_field, wg_negate(used_gen))
  wg_add(acct_key, paid_field, wg_negate(paid_used))
  WG_FX = {}
  return {'overflow', '0', '0', '0', '0'}
end
local seq = wg_next_seq(currency)
wg_hset_many(tx_key, {'cancelled', '1', 'cancel_seq', seq, 'cancelled_us', wg_now_us()},
  retention_s)
wg_journal(currency, seq, 'cancelpay', paid_used, paid_after, '0',
  {'gdelta', used_gen, 'gbal', gen_after})
return {'applied', '0', paid_after, gen_after, used_gen}
