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

-- The stored outcome's fp, state, code, bal, created_us and tombstoned (all nil when the key
-- is new).
local function v2_stored()
  return redis.call('HMGET', tx_key, 'fp', 'state', 'code', 'bal', 'created_us', 'tombstoned')
end

-- Whether the key holds the stored CANCELLED rejection of another request on a tombstone
-- (marked "tombstoned"): it still counts as a tombstone for this request, while the earlier
-- request keeps its replay.
local function v2_refused_as_cancelled(stored)
  return stored[6] and stored[1] ~= fp
end

-- The answer when nothing is to be done: a replay of the stored outcome, a conflict (another
-- fingerprint holds the key), "cancelled" (v2_refused_as_cancelled) or an unknown account; nil
-- when the request must be applied (the first request on a tombstone is applied too: the body
-- stores its CANCELLED rejection).
local function v2_answer_stored(stored)
  if v2_refused_as_cancelled(stored) then
    -- Refused as the earlier request was, and nothing written, so its record (and replay)
    -- stays as it is.
    return {'cancelled', 'CANCELLED', wg_get(account_key, balance_field), '0', ''}
  end
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

-- Store the request's outcome as its tx record (op "bet", "win" or "tombstone"), journaled
-- through fx; extra: more field/value pairs.
local function v2_store(op, state, code, delta, balance, seq, now_us, extra)
  local fields = {
    'fp', fp, 'state', state, 'code', code, 'op', op, 'protocol', protocol,
    'player', player, 'currency', currency, 'delta', delta, 'bal', balance, 'seq', seq,
    'created_us', now_us, 'id', money_id, 'round', round, 'amount', amount_units,
  }
  if extra then
    for i = 1, #extra do fields[#fields + 1] = extra[i] end
  end
  wg_hset_many(tx_key, fields, retention_s)
end

-- Refuse the first request on a tombstone with a stored CANCELLED. The record keeps op
-- "tombstone" and the tombstone's cancelled_by, and "tombstoned" marks it, so the key still
-- refuses any other request (v2_refused_as_cancelled), and still reads as cancelled to a
-- cancel that names it.
local function v2_reject_cancelled()
  local balance = wg_get(account_key, balance_field)
  local seq = wg_next_seq(currency)
  local now_us = wg_now_us()
  v2_store('tombstone', 'rejected', 'CANCELLED', '0', balance, seq, now_us, {'tombstoned', '1'})
  wg_journal(currency, seq, 'reject', '0', balance, 'CANCELLED')
  return {'stored', 'CANCELLED', balance, now_us, 'reject'}
end
