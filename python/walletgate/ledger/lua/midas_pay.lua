-- midas_pay: deduct coins (gifted part first, then paid), idempotent on (appid, bill_no).
--
-- KEYS[1] wg:{T:P}:acct, KEYS[2] journal stream (prelude), KEYS[3] wg:{T:P}:tx:<bill_no>,
-- KEYS[4] wg:{T:P}:midas_session
-- ARGV[1..8] prelude common arguments: currency = zone_id or "sandbox-<zone_id>", protocol =
--          "midas" or "midas_sandbox", key = bill_no, retention = [idempotency] midas_ttl_s
-- ARGV[9]  amount_units: decimal integer string, > 0 (amt coins x 10000)
-- ARGV[10] session digest: sha1 hex of the session_key Python verified mp_sig with
-- ARGV[11] bill_no (kept on the record so the stored response can be rebuilt)
-- Returns: {outcome, code, paid_units, gen_units, used_gen_units}
--   "applied"  code "0"; the paid and gifted parts after the pay, and the gifted part used
--   "rejected" code "90013" (paid + gifted < amt), stored; the unchanged parts
--   "replay"   the stored code and the parts and used_gen as first returned
--   "conflict" bill_no stored with another fingerprint (90012); nothing written
--   "session"  the session_key is gone, expired or not the one verified; nothing written
--   "overflow" cost_sum would leave int64; nothing written
-- Record fields (besides the common ones): gdelta, gbal (gifted delta and after), amt, used_gen,
-- paid_used (the two parts taken, restored exactly by midas_cancelpay), bill_no.
-- Journal: kind "pay" (delta/bal = paid part, extra gdelta/gbal = gifted part) or "reject".

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
local paid_field = 'bal:' .. currency
local gen_field = 'gen:' .. currency

local session = redis.call('HMGET', session_record_key, 'session_key', 'expires_at')
if not session[1] or not session[2] or redis.sha1hex(session[1]) ~= session_digest
    or tonumber(session[2]) <= tonumber(redis.call('TIME')[1]) then
  return {'session', '0', '0', '0', '0'}
end

local stored = redis.call('HMGET', tx_key, 'fp', 'code', 'bal', 'gbal', 'used_gen')
if stored[1] then
  if stored[1] ~= fp then
    return {'conflict', '90012', '0', '0', '0'}
  end
  return {'replay', stored[2] or '0', stored[3] or '0', stored[4] or '0', stored[5] or '0'}
end

local function store(fields)
  wg_hset_many(tx_key, {'fp', fp, unpack(fields)}, retention_s)
end

local paid = wg_get(acct_key, paid_field)
local gen = wg_get(acct_key, gen_field)
local used_gen = amount_units
local paid_used = '0'
if wg_cmp(gen, amount_units) < 0 then
  -- amt - gen, computed exactly by HINCRBY on the record that keeps it (never Lua numbers).
  used_gen = gen
  wg_hset(tx_key, 'paid_used', amount_units, retention_s)
  paid_used = wg_add(tx_key, 'paid_used', wg_negate(gen))
end

if wg_cmp(paid, paid_used) < 0 then
  local seq = wg_next_seq(currency)
  store({
    'state', 'rejected', 'code', '90013', 'op', 'pay', 'protocol', protocol, 'player', ARGV[2],
    'currency', currency, 'delta', '0', 'bal', paid, 'gdelta', '0', 'gbal', gen,
    'amt', amount_units, 'used_gen', '0', 'paid_used', '0', 'bill_no', bill_no, 'seq', seq,
    'created_us', wg_now_us(),
  })
  wg_journal(currency, seq, 'reject', '0', paid, '90013', {'gdelta', '0', 'gbal', gen})
  return {'rejected', '90013', paid, gen, '0'}
end

-- Only cost_sum can overflow (both parts decrease); add it first so nothing else has changed.
if not wg_add(acct_key, 'cost_sum:' .. currency, amount_units) then
  redis.call('DEL', tx_key) -- at most the paid_used scratch of this call was written there
  WG_FX = {}
  return {'overflow', '0', paid, gen, '0'}
end
local gen_delta = wg_negate(used_gen)
local paid_delta = wg_negate(paid_used)
local gen_after = wg_add(acct_key, gen_field, gen_delta)
local paid_after = wg_add(acct_key, paid_field, paid_delta)
local seq = wg_next_seq(currency)
store({
  'state', 'applied', 'code', '0', 'op', 'pay', 'protocol', protocol, 'player', ARGV[2],
  'currency', currency, 'delta', paid_delta, 'bal', paid_after, 'gdelta', gen_delta,
  'gbal', gen_after, 'amt', amount_units, 'used_gen', used_gen, 'paid_used', paid_used,
  'bill_no', bill_no, 'seq', seq, 'created_us', wg_now_us(),
})
wg_journal(currency, seq, 'pay', paid_delta, paid_after, '0',
  {'gdelta', gen_delta, 'gbal', gen_after})
return {'applied', '0', paid_after, gen_after, used_gen}
