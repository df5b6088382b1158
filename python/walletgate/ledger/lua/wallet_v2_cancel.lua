-- wallet_v2_cancel: the cancel model applied to the bet (wallet_token, currency, id); the
-- cancel itself is idempotent on (wallet_token, currency, id, "cancel").
--
-- KEYS[1] account hash, KEYS[2] journal stream (prelude)
-- KEYS[3] wg:{T:P}:tx:<currency>:<id>:cancel   the cancel's transaction record
-- KEYS[4] wg:{T:P}:tx:<currency>:<id>          the target bet's record (tombstoned if absent)
-- ARGV[1..8] prelude common arguments (key = "<currency>:<id>:cancel"; fingerprint: player)
-- ARGV[9]  id: the target's id, a decimal uint64 string
-- Returns: {outcome, code, balance_units, created_us, kind}
--   outcome "stored" with code and kind:
--     "1"/"cancel"     an unsettled debited bet was refunded (its original debit), or there was
--                      nothing to refund (already cancelled, or a stored rejection): delta 0
--     "1"/"tombstone"  unknown target: a tombstone now holds its key (a later bet or win on it
--                      gets CANCELLED)
--     "SETTLED"/"reject" a win was applied in the bet's round
--   | "replay": the stored code, balance_units, created_us | "conflict": another fingerprint
--   holds the cancel key (current balance) | "unknown": the player's account does not exist |
--   "win": the target is a win (BAD_REQUEST; current balance) | "overflow": the refund would
--   leave int64 (current balance). Nothing is written unless "stored".
--
-- The refunded bet gets cancelled_by = this cancel's key, and its round hash field
-- "bet:<id>" = "cancelled" (wg:{T:P}:round:<currency>:<round>, same hash tag, built here).

local player = ARGV[2]
local currency = ARGV[3]
local protocol = ARGV[4]
local tx_name = ARGV[5]
local fp = ARGV[6]
local retention_s = ARGV[8]
local bet_id = ARGV[9]
local account_key = KEYS[1]
local tx_key = KEYS[3]
local bet_key = KEYS[4]
local balance_field = 'bal:' .. currency
local bet_name = string.sub(wg_suffix(bet_key), 4) -- strip "tx:"

local stored = redis.call('HMGET', tx_key, 'fp', 'code', 'bal', 'created_us')
if stored[1] then
  if stored[1] ~= fp then
    return {'conflict', 'DUPLICATE_ID', wg_get(account_key, balance_field), '0', ''}
  end
  return {'replay', stored[2], stored[3], stored[4], ''}
end
if redis.call('EXISTS', account_key) == 0 then
  return {'unknown', '', '0', '0', ''}
end

local function store(state, code, delta, balance, seq, now_us, result)
  local fields = {
    'fp', fp, 'state', state, 'code', code, 'op', 'cancel', 'protocol', protocol,
    'player', player, 'currency', currency, 'delta', delta, 'bal', balance, 'seq', seq,
    'created_us', now_us, 'id', bet_id, 'target', bet_name, 'result', result,
  }
  wg_hset_many(tx_key, fields, retention_s)
end

local balance = wg_get(account_key, balance_field)
local target = redis.call('HMGET', bet_key, 'state', 'op', 'delta', 'round', 'settled_by',
  'cancelled_by')
local state, op, bet_delta, round = target[1], target[2], target[3], target[4]
local settled_by, cancelled_by = target[5], target[6]

if not state then
  local seq = wg_next_seq(currency)
  local now_us = wg_now_us()
  local fields = {
    'fp', fp, 'state', 'tombstone', 'code', '1', 'op', 'tombstone', 'protocol', protocol,
    'player', player, 'currency', currency, 'delta', '0', 'bal', balance, 'seq', seq,
    'created_us', now_us, 'id', bet_id, 'cancelled_by', tx_name,
  }
  wg_hset_many(bet_key, fields, retention_s)
  store('applied', '1', '0', balance, seq, now_us, 'tombstone')
  wg_journal(currency, seq, 'tombstone', '0', balance, 1)
  return {'stored', '1', balance, now_us, 'tombstone'}
end
if op == 'win' then
  return {'win', 'BAD_REQUEST', balance, '0', ''}
end
if state ~= 'applied' or cancelled_by then
  -- Already cancelled, or its stored outcome is a rejection: nothing to refund.
  local seq = wg_next_seq(currency)
  local now_us = wg_now_us()
  store('applied', '1', '0', balance, seq, now_us, 'noop')
  wg_journal(currency, seq, 'cancel', '0', balance, 1)
  return {'stored', '1', balance, now_us, 'cancel'}
end
if settled_by then
  local seq = wg_next_seq(currency)
  local now_us = wg_now_us()
  store('rejected', 'SETTLED', '0', balance, seq, now_us, 'settled')
  wg_journal(currency, seq, 'reject', '0', balance, 'SETTLED')
  return {'stored', 'SETTLED', balance, now_us, 'reject'}
end

local refund = wg_negate(bet_delta)
local balance_after = wg_add(account_key, balance_field, refund)
if not balance_after then
  return {'overflow', '', balance, '0', ''}
end
local seq = wg_next_seq(currency)
local now_us = wg_now_us()
store('applied', '1', refund, balance_after, seq, now_us, 'refunded')
wg_hset(bet_key, 'cancelled_by', tx_name, retention_s)
if round then
  wg_hset(WG_PREFIX .. 'round:' .. currency .. ':' .. round, 'bet:' .. bet_id, 'cancelled',
    retention_s)
end
wg_journal(currency, seq, 'cancel', refund, balance_after, 1)
return {'stored', '1', balance_after, now_us, 'cancel'}
