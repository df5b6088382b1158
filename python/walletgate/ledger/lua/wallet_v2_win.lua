-- wallet_v2_win: credit a Wallet v2 win, idempotent on (wallet_token, currency, id); a win that
-- carries round_id R settles every open bet of R (win 0 moves nothing but still settles R).
--
-- KEYS[1] account hash, KEYS[2] journal stream (prelude)
-- KEYS[3] wg:{T:P}:tx:<currency>:<id>          the win's transaction record
-- KEYS[4] wg:{T:P}:round:<currency>:<round_id> the round it settles (only when round_id is given)
-- ARGV[1..8] prelude common arguments (key = "<currency>:<id>"; the fingerprint covers type,
--          player, amount and round_id)
-- ARGV[9]  amount_units: decimal integer string >= 0 (cents x 100)
-- ARGV[10] id: the win's id, a decimal uint64 string
-- ARGV[11] round: round_id as a decimal uint64 string, or "" when the request has none
-- Returns: {outcome, code, balance_units, created_us, kind}
--   outcome "stored": code "1" (credited; kind "win", or "close" for a zero win that closes a
--     round) or "CANCELLED" (the key holds a tombstone; kind "reject") | "replay": the stored
--     code, balance_units and created_us | "cancelled": the key holds the stored CANCELLED of
--     another request on a tombstone (current balance) | "conflict": another fingerprint holds
--     the key (current balance) | "unknown": the player's account does not exist | "overflow":
--     the balance would leave int64 (current balance; nothing written). A win is never refused
--     for balance reasons.
--
-- Settling: the round hash gets settled_by (the first settling win) and every "bet:<id>" field
-- still "open" becomes "settled"; that bet's record (wg:{T:P}:tx:<currency>:<id>, same hash
-- tag, built here from the prelude's WG_PREFIX) gets settled_by = this win's key.

-- include: _wallet_v2_money
local win_id = money_id
local stored = v2_stored()
local early = v2_answer_stored(stored)
if early then
  return early
end

local function store(state, code, delta, balance, seq, now_us)
  v2_store('win', state, code, delta, balance, seq, now_us)
end

if stored[2] == 'tombstone' then
  return v2_reject_cancelled()
end

local balance_after = wg_add(account_key, balance_field, amount_units)
if not balance_after then
  return {'overflow', '', wg_get(account_key, balance_field), '0', ''}
end
local seq = wg_next_seq(currency)
local now_us = wg_now_us()
store('applied', '1', amount_units, balance_after, seq, now_us)
local kind = 'win'
if round ~= '' then
  if amount_units == '0' then
    kind = 'close'
  end
  if not redis.call('HGET', round_key, 'settled_by') then
    wg_hset(round_key, 'settled_by', tx_name, retention_s)
  end
  local fields = redis.call('HGETALL', round_key)
  for i = 1, #fields, 2 do
    local field = fields[i]
    if fields[i + 1] == 'open' and string.sub(field, 1, 4) == 'bet:' then
      wg_hset(round_key, field, 'settled', retention_s)
      local bet_key = WG_PREFIX .. 'tx:' .. currency .. ':' .. string.sub(field, 5)
      if redis.call('EXISTS', bet_key) == 1 then
        wg_hset(bet_key, 'settled_by', tx_name, retention_s)
      end
    end
  end
end
wg_journal(currency, seq, kind, amount_units, balance_after, 1)
return {'stored', '1', balance_after, now_us, kind}
