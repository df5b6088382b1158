-- midas_present: gift coins (gifted part and present_sum grow), idempotent on (appid, bill_no),
-- sharing the key space with midas_pay.
--
-- KEYS[1] wg:{T:P}:acct, KEYS[2] journal stream (prelude), KEYS[3] wg:{T:P}:tx:<bill_no>,
-- KEYS[4] wg:{T:P}:midas_session
-- ARGV[1..8] prelude common arguments (as midas_pay)
-- ARGV[9]  amount_units: decimal integer string, > 0 (present_counts coins x 10000)
-- ARGV[10] session digest: sha1 hex of the session_key Python verified mp_sig with
-- ARGV[11] bill_no
-- Returns: {outcome, code, paid_units, gen_units, "0"}
--   "applied"  code "0"; the paid and gifted parts after the present
--   "replay"   the stored code and parts as first returned
--   "conflict" bill_no stored with another fingerprint (90012); nothing written
--   "session"  the session_key is gone, expired or not the one verified; nothing written
--   "overflow" the gifted part, present_sum or the balance (paid plus gifted) would leave int64;
--              nothing written
-- Journal: kind "present" (delta "0" and bal = paid part, extra gdelta/gbal = gifted part).

local currency = ARGV[3]
local protocol = ARGV[4]
local fp = ARGV[6]
local retention_s = ARGV[8]
local amount_units = ARGV[9]
local session_digest = ARGV[10]
local bill_no = ARGV[11]
local acct_key = KEYS[1]
local tx_key = KEYS[3]
local session_record_key = KEYS[4]
local gen_field = 'gen:' .. currency

local session = redis.call('HMGET', session_record_key, 'session_key', 'expires_at')
if not session[1] or not session[2] or redis.sha1hex(session[1]) ~= session_digest
    or tonumber(session[2]) <= tonumber(redis.call('TIME')[1]) then
  return {'session', '0', '0', '0', '0'}
end

local stored = redis.call('HMGET', tx_key, 'fp', 'code', 'bal', 'gbal')
if stored[1] then
  if stored[1] ~= fp then
    return {'conflict', '90012', '0', '0', '0'}
  end
  return {'replay', stored[2] or '0', stored[3] or '0', stored[4] or '0', '0'}
end

local parts = redis.call('HMGET', acct_key, 'bal:' .. currency, gen_field)
if not wg_total_fits({parts[1] or '0', parts[2] or '0', amount_units}) then
  return {'overflow', '0', parts[1] or '0', parts[2] or '0', '0'}
end
local gen_after = wg_add(acct_key, gen_field, amount_units)
if not gen_after then
  return {'overflow', '0', wg_get(acct_key, 'bal:' .. currency), wg_get(acct_key, gen_field), '0'}
end
if not wg_add(acct_key, 'present_sum:' .. currency, amount_units) then
  wg_add(acct_key, gen_field, wg_negate(amount_units)) -- back to the value read: nothing changed
  WG_FX = {}
  return {'overflow', '0', wg_get(acct_key, 'bal:' .. currency), wg_get(acct_key, gen_field), '0'}
end
local paid = wg_get(acct_key, 'bal:' .. currency)
local seq = wg_next_seq(currency)
wg_hset_many(tx_key, {
  'fp', fp, 'state', 'applied', 'code', '0', 'op', 'present', 'protocol', protocol,
  'player', ARGV[2], 'currency', currency, 'delta', '0', 'bal', paid, 'gdelta', amount_units,
  'gbal', gen_after, 'amt', amount_units, 'bill_no', bill_no, 'seq', seq,
  'created_us', wg_now_us(),
}, retention_s)
wg_journal(currency, seq, 'present', '0', paid, '0', {'gdelta', amount_units, 'gbal', gen_after})
return {'applied', '0', paid, gen_after, '0'}
