-- _wallet_v2_money: included by wallet_v2_bet and wallet_v2_win (after the prelude, see
-- walletgate.ledger.scripts): their common arguments, the idempotency check and the tx record.
--
-- KEYS[3] wg:{T:P}:tx:<currency>:<id> the request's transaction record, KEYS[4] its round
-- ARGV[9] amount_units, ARGV[10] id (decimal uint64), ARGV[11] round ("" when none, win only)

local player = ARGV[2]
local currency = ARGV[3]
local protocol = ARGV[4]
local tx_name = ARGV[5]
local fp = ARGV[6]
local retention_s = ARGV[8]
local amount_units = ARGV[9]
local money_id = ARGV[10]
local round = ARGV[11]
local account_key = KEYS[1]
local tx_key = KEYS[3]
local round_key = KEYS[4]
local balance_field = 'bal:' .. currency

-- The stored outcome's fp, state, code, bal and created_us (all nil when the key is new).
local function v2_stored()
  return redis.call('HMGET', tx_key, 'fp', 'state', 'code', 'bal', 'created_us')
end

-- The answer when nothing is to be done: a replay of the stored outcome, a conflict (another
-- fingerprint holds the key) or an unknown account; nil when the request must be applied (a
-- tombstone is applied too: the body stores its CANCELLED rejection).
local function v2_answer_stored(stored)
  if stored[1] and stored[2] ~= 'tombstone' then
    if stored[1] ~= fp then
      return {'conflict', 'DUPLICATE_ID', wg_get(account_key, balance_field), '0', ''}
    end
    return {'replay', stored[3], stored[4], stored[5], ''}
  end
  if redis.call('EXISTS', account_key) == 0 then
    return {'unknown', '', '0', '0', ''}
  end
  return nil
end

-- Store the request's outcome as its tx record (op "bet" or "win"), journaled through fx.
local function v2_store(op, state, code, delta, balance, seq, now_us)
  wg_hset_many(tx_key, {
    'fp', fp, 'state', state, 'code', code, 'op', op, 'protocol', protocol,
    'player', player, 'currency', currency, 'delta', delta, 'bal', balance, 'seq', seq,
    'created_us', now_us, 'id', money_id, 'round', round, 'amount', amount_units,
  }, retention_s)
end
