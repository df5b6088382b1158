-- wallet_v2_bet: debit a Wallet v2 bet, idempotent on (wallet_token, currency, id).
--
-- KEYS[1] account hash, KEYS[2] journal stream (prelude)
-- KEYS[3] wg:{T:P}:tx:<currency>:<id>          the bet's transaction record
-- KEYS[4] wg:{T:P}:round:<currency>:<round>    the bet's round (round_id, else the bet's own id)
-- ARGV[1..8] prelude common arguments (key = "<currency>:<id>"; the fingerprint covers type,
--          player, amount and round_id)
-- ARGV[9]  amount_units: decimal integer string >= 0 (cents x 100)
-- ARGV[10] id: the bet's id, a decimal uint64 string
-- ARGV[11] round: the round id the bet joins, a decimal uint64 string
-- Returns: {outcome, code, balance_units, created_us, kind}
--   outcome "stored": a new stored outcome, code "1" (debited), "INSUFFICIENT_FUNDS" or
--     "CANCELLED" (the key holds a tombstone); kind is the journal kind written ("bet" or
--     "reject") | "replay": code, balance_units and created_us of the stored outcome |
--     "cancelled": the key holds the stored CANCELLED of another request on a tombstone
--     (current balance) | "conflict": the key holds another fingerprint (balance_units is the
--     current balance) | "unknown": the player's account does not exist. Nothing is written
--     unless "stored".
--
-- Tx record (hash, TTL = retention): fp, state (applied|rejected), code, op "bet", protocol,
-- player, currency, delta, bal, seq, created_us, id, round, amount, and later settled_by (the
-- win that settled its round) or cancelled_by (the cancel that refunded it). A bet refused on a
-- tombstone keeps op "tombstone" and cancelled_by, with tombstoned = "1".
-- Round hash: field "bet:<id>" = open|settled|cancelled, "settled_by" = first settling win.

-- include: _wallet_v2_money
local bet_id = money_id
local stored = v2_stored()
local early = v2_answer_stored(stored)
if early then
  return early
end

local function store(state, code, delta, balance, seq, now_us)
  v2_store('bet', state, code, delta, balance, seq, now_us)
end

if stored[2] == 'tombstone' then
  -- A cancel arrived first: the bet is refused for good.
  return v2_reject_cancelled()
end
local balance = wg_get(account_key, balance_field)
if wg_cmp(balance, amount_units) < 0 then
  local seq = wg_next_seq(currency)
  local now_us = wg_now_us()
  store('rejected', 'INSUFFICIENT_FUNDS', '0', balance, seq, now_us)
  wg_journal(currency, seq, 'reject', '0', balance, 'INSUFFICIENT_FUNDS')
  return {'stored', 'INSUFFICIENT_FUNDS', balance, now_us, 'reject'}
end

-- 0 <= amount <= balance, so the debit cannot leave the int64 range.
local delta = wg_negate(amount_units)
local balance_after = wg_add(account_key, balance_field, delta)
local seq = wg_next_seq(currency)
local now_us = wg_now_us()
store('applied', '1', delta, balance_after, seq, now_us)
local settled_by = redis.call('HGET', round_key, 'settled_by')
if settled_by then
  -- A win was already applied in this round: the bet is settled from the start.
  wg_hset(tx_key, 'settled_by', settled_by, retention_s)
  wg_hset(round_key, 'bet:' .. bet_id, 'settled', retention_s)
else
  wg_hset(round_key, 'bet:' .. bet_id, 'open', retention_s)
end
wg_journal(currency, seq, 'bet', delta, balance_after, 1)
return {'stored', '1', balance_after, now_us, 'bet'}
