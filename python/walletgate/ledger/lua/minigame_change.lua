-- minigame_change: MINI.GAME seamless change_balance (types 1-7), idempotent on (app_id, order_id).
--
-- KEYS[1] account hash, KEYS[2] journal stream (prelude)
-- KEYS[3] wg:{T:P}:tx:<order_id>                 this request's transaction record
-- KEYS[4] wg:{T:P}:round:<session_id>            the round, or KEYS[1] when there is no session_id
-- KEYS[5] wg:{T:P}:tx:<cancel_order_id>          type 2 only: the bet to cancel, else KEYS[1]
-- KEYS[6..] wg:{T:P}:tx:<bet order_id>           types 3 and 4: one per award_order_ids item
-- ARGV[1..8] prelude common arguments (ARGV[3] = the configured currency, ARGV[5] = order_id)
-- ARGV[9]  type "1".."7" (already checked against the merchant's enabled types)
-- ARGV[10] money: signed units string
-- ARGV[11] |money|: units string (type 1/6 debit; type 2 compared with the refund)
-- ARGV[12] end_round: "1" or "0"
-- ARGV[13] session_id ("" when none)
-- ARGV[14] cancel_order_id ("" when none)
--
-- Returns {status, code, balance_units, msg, a, b, c, d}
--   "applied"  code "1"; a = effect (debit|credit|refund|noop|tombstone), b = "1" when a cancel's
--              amount differs from the refunded debit, c = award items naming no applied bet,
--              d = award items naming a bet already awarded
--   "rejected" a business rejection stored now: code "10001" or "10010" (not stored when the
--              key already holds the stored rejection of another request on a tombstone)
--   "replay"   the stored code, balance and msg; a = "1" when this replay closed the round,
--              b = the stored type
--   "conflict" order_id reused with another fingerprint (nothing written)
--   "unknown_player" | "bad_cancel" (cancel_order_id names no type 1/6 order) |
--   "overflow" (a credit would leave int64): nothing written
--
-- The tx record carries fp, state (applied|rejected|tombstone), code, msg, op (bet|fee|win|cancel|
-- tombstone), type, protocol, player, currency, delta, bal, seq, created_us, round, and as they
-- happen cancel_of, effect, cancelled_by, awarded_by, settled_by, and tombstoned ("1": the
-- stored rejection of a request on a tombstone, which still counts as one). A round hash carries
-- "bet:<order_id>" per bet or fee placed in it and "closed" = the order_id that closed it.
--
-- This runs for every MINI.GAME bet and win, so the common paths are written for Redis-side cost
-- (see "Cost" in the prelude): the balance and seq are read with one HMGET, and the fx JSON of
-- the request's own records is built by one concatenation each.

local currency = ARGV[3]
local protocol = ARGV[4]
local order_id = ARGV[5]
local fp = ARGV[6]
local retention_s = ARGV[8]
local mg_type = ARGV[9]
local money = ARGV[10]
local money_abs = ARGV[11]
local end_round = ARGV[12] == '1'
local session_id = ARGV[13]
local cancel_order_id = ARGV[14]
local acct = KEYS[1]
local tx_key = KEYS[3]
local round_key = KEYS[4]
local target_key = KEYS[5]
local has_round = session_id ~= ''

local op = nil
if mg_type == '1' then op = 'bet'
elseif mg_type == '3' or mg_type == '4' or mg_type == '5' or mg_type == '7' then op = 'win'
elseif mg_type == '2' then op = 'cancel'
elseif mg_type == '6' then op = 'fee'
end

-- The balance and journal seq in the request's currency, read once: every stored outcome needs
-- both, and this HMGET replaces EXISTS and an HGET.
local account = redis.call('HMGET', acct, 'bal:' .. currency, 'seq:' .. currency)
-- A known player may have neither field yet (player_touch sets only "known"): ask EXISTS then.
if not account[1] and not account[2] and redis.call('EXISTS', acct) == 0 then
  return {'unknown_player', '0', '0', ''}
end

-- The fx entries of the request's own records (account balance, tx record, round bet) are built
-- by plain concatenation when the keys are under WG_PREFIX and the strings that go in them hold
-- nothing JSON must escape (one check for all); otherwise wg_fx encodes them.
local tx_suffix = string.sub(tx_key, #WG_PREFIX + 1)
local round_suffix = string.sub(round_key, #WG_PREFIX + 1)
local plain = acct == WG_PREFIX .. 'acct' and tx_key == WG_PREFIX .. tx_suffix
  and round_key == WG_PREFIX .. round_suffix
  and wg_plain(tx_suffix .. round_suffix .. ARGV[2] .. currency .. protocol .. order_id .. fp
    .. retention_s .. session_id)

-- Add delta (a units string) to the balance of cur and take that account's next journal seq,
-- each with HINCRBY: money never goes through Lua arithmetic (Lua numbers are doubles), and
-- HINCRBY refuses to leave int64. Returns the new balance and the seq, or nil when the balance
-- would leave int64 (nothing changed then). As with wg_add, a delta of "0" leaves the balance
-- field alone (and out of fx).
local function mg_move(cur, delta)
  local balance_field = 'bal:' .. cur
  local new_balance
  if delta == '0' then
    if cur == currency then
      new_balance = account[1] or '0'
    else
      new_balance = wg_get(acct, balance_field)
    end
  else
    new_balance = wg_hincrby(acct, balance_field, delta)
    if not new_balance then
      return nil
    end
    if plain and cur == currency then
      local separator = ','
      if #WG_FX == 0 then separator = '[' end
      WG_FX[#WG_FX + 1] = separator .. '["acct","' .. balance_field .. '","' .. new_balance
        .. '","0"]'
    else
      wg_fx(acct, {balance_field, new_balance}, '0')
    end
  end
  local new_seq = wg_next_seq(cur)
  if cur == currency then account[1], account[2] = new_balance, new_seq end
  return new_balance, new_seq
end

-- Store the request's own tx record (extra: more field/value pairs, after the usual ones).
local function store_own(state, code, msg, cur, delta, balance, seq, extra)
  local now_us = wg_now_us()
  -- delta, balance and seq are integers (from mg_move), except a balance passed on unchanged.
  if extra or not plain or cur ~= currency
    or (delta == '0' and not string.find(balance, '^%-?%d+$')) then
    local flat = {'fp', fp, 'state', state, 'code', code, 'msg', msg, 'op', op, 'type', mg_type,
      'protocol', protocol, 'player', ARGV[2], 'currency', cur, 'delta', delta, 'bal', balance,
      'seq', seq, 'created_us', now_us, 'round', session_id}
    if extra then
      for i = 1, #extra do flat[#flat + 1] = extra[i] end
    end
    wg_hset_many(tx_key, flat, retention_s)
    return
  end
  -- The usual case, as above without a table: state, code, msg, op and type are this script's
  -- constants, delta, balance, seq and now_us integers, the rest was checked by `plain`.
  redis.call('HSET', tx_key, 'fp', fp, 'state', state, 'code', code, 'msg', msg, 'op', op,
    'type', mg_type, 'protocol', protocol, 'player', ARGV[2], 'currency', cur, 'delta', delta,
    'bal', balance, 'seq', seq, 'created_us', now_us, 'round', session_id)
  wg_expire(tx_key, retention_s)
  local separator = ','
  if #WG_FX == 0 then separator = '[' end
  local next_entry = '","' .. retention_s .. '"],["' .. tx_suffix .. '","'
  WG_FX[#WG_FX + 1] = separator .. '["' .. tx_suffix .. '","fp","' .. fp .. next_entry
    .. 'state","' .. state .. next_entry .. 'code","' .. code .. next_entry
    .. 'msg","' .. msg .. next_entry .. 'op","' .. op .. next_entry
    .. 'type","' .. mg_type .. next_entry .. 'protocol","' .. protocol .. next_entry
    .. 'player","' .. ARGV[2] .. next_entry .. 'currency","' .. cur .. next_entry
    .. 'delta","' .. delta .. next_entry .. 'bal","' .. balance .. next_entry
    .. 'seq","' .. seq .. next_entry .. 'created_us","' .. now_us .. next_entry
    .. 'round","' .. session_id .. '","' .. retention_s .. '"]'
end

-- Close the request's round (once): every applied, unsettled, uncancelled bet in it is settled.
local function close_round()
  if not has_round then
    return false
  end
  -- One HKEYS both tells whether the round is closed already and lists its bets.
  local fields = redis.call('HKEYS', round_key)
  for i = 1, #fields do
    if fields[i] == 'closed' then
      return false
    end
  end
  for _, field in ipairs(fields) do
    if string.sub(field, 1, 4) == 'bet:' then
      local bet_key = WG_PREFIX .. 'tx:' .. string.sub(field, 5)
      local bet = redis.call('HMGET', bet_key, 'state', 'settled_by', 'cancelled_by')
      if bet[1] == 'applied' and not bet[2] and not bet[3] then
        wg_hset_many(bet_key, {'settled_by', order_id}, retention_s)
      end
    end
  end
  wg_hset_many(round_key, {'closed', order_id}, retention_s)
  return true
end

local function reject(code, msg)
  local balance, seq = mg_move(currency, '0')
  store_own('rejected', code, msg, currency, '0', balance, seq)
  wg_journal(currency, seq, 'reject', '0', balance, code)
  return {'rejected', code, balance, msg}
end

-- A request on a tombstoned order_id is refused for good. The first one's rejection is stored
-- (its retry replays it), but the record stays a tombstone for everything else: it keeps op
-- "tombstone" and its cancelled_by, and "tombstoned" marks it, so another request on the key
-- gets 10010 too (not 10005), and a cancel naming it finds a tombstone (code 1, nothing to
-- refund).
local function reject_on_tombstone()
  local balance, seq = mg_move(currency, '0')
  op = 'tombstone'
  store_own('rejected', '10010', 'order cancelled', currency, '0', balance, seq,
    {'tombstoned', '1'})
  wg_journal(currency, seq, 'reject', '0', balance, '10010')
  return {'rejected', '10010', balance, 'order cancelled'}
end

-- Idempotency: a stored record answers (or a tombstone rejects) before anything else. Every
-- stored record has a state; the rest of it is read only when there is one.
if redis.call('HGET', tx_key, 'state') then
  local stored = redis.call('HMGET', tx_key, 'fp', 'state', 'code', 'bal', 'msg', 'type',
    'currency', 'tombstoned')
  if stored[2] == 'tombstone' then
    return reject_on_tombstone()
  end
  if stored[8] and stored[1] ~= fp then
    -- The key holds the stored rejection of the first request on the tombstone: another request
    -- is refused as that one was, and the record stays as it is, so that request's retry still
    -- gets its replay. Nothing is written.
    return {'rejected', '10010', account[1] or '0', 'order cancelled'}
  end
  if stored[1] ~= fp then
    return {'conflict', '0', '0', ''}
  end
  local closed = '0'
  if stored[2] == 'applied' and (mg_type == '4' or end_round) and close_round() then
    closed = '1'
    local stored_currency = stored[7]
    local balance, seq = mg_move(stored_currency, '0')
    wg_journal(stored_currency, seq, 'close', '0', balance, stored[3])
  end
  return {'replay', stored[3], stored[4], stored[5], closed, stored[6]}
end

-- Debits: type 1 bet, type 6 position fee.
if op == 'bet' or op == 'fee' then
  local balance = account[1] or '0'
  if wg_cmp(balance, money_abs) < 0 then
    return reject('10001', 'balance is not enough')
  end
  local delta = wg_negate(money_abs)
  local new_balance, seq = mg_move(currency, delta)
  if not new_balance then
    return {'overflow', '0', balance, ''}
  end
  local extra = nil
  local closer = false
  if has_round then
    closer = redis.call('HGET', round_key, 'closed')
  end
  if closer then
    extra = {'settled_by', closer}
  end
  store_own('applied', '1', 'ok', currency, delta, new_balance, seq, extra)
  if has_round and not closer then
    redis.call('HSET', round_key, 'bet:' .. order_id, '1')
    wg_expire(round_key, retention_s)
    if plain then
      -- Not the first entry: the tx record's came before.
      WG_FX[#WG_FX + 1] = ',["' .. round_suffix .. '","bet:' .. order_id .. '","1","'
        .. retention_s .. '"]'
    else
      wg_fx(round_key, {'bet:' .. order_id, '1'}, retention_s)
    end
  end
  if end_round then close_round() end
  wg_journal(currency, seq, 'bet', delta, new_balance, '1')
  return {'applied', '1', new_balance, 'ok', 'debit', '0', '0', '0'}
end

-- Credits: type 3 in-round payout, 4 settlement, 5 and 7 OMG promotions.
if op == 'win' then
  local new_balance, seq = mg_move(currency, money)
  if not new_balance then
    return {'overflow', '0', account[1] or '0', ''}
  end
  local unknown, already = 0, 0
  for i = 6, #KEYS do
    local bet_key = KEYS[i]
    local bet = redis.call('HMGET', bet_key, 'state', 'op', 'awarded_by', 'settled_by',
      'cancelled_by')
    if bet[1] ~= 'applied' or (bet[2] ~= 'bet' and bet[2] ~= 'fee') then
      unknown = unknown + 1
    elseif bet[3] then
      already = already + 1
    elseif not bet[4] and not bet[5] then
      wg_hset_many(bet_key, {'awarded_by', order_id, 'settled_by', order_id}, retention_s)
    else
      wg_hset_many(bet_key, {'awarded_by', order_id}, retention_s)
    end
  end
  store_own('applied', '1', 'ok', currency, money, new_balance, seq)
  if mg_type == '4' or end_round then close_round() end
  wg_journal(currency, seq, 'win', money, new_balance, '1')
  return {'applied', '1', new_balance, 'ok', 'credit', '0', tostring(unknown), tostring(already)}
end

-- Type 2: cancel, per the cancel model.
local target = redis.call('HMGET', target_key, 'state', 'op', 'delta', 'currency',
  'cancelled_by', 'settled_by')
if not target[1] then
  -- Unknown bet: nothing moves; a tombstone makes a later bet on that key fail with 10010.
  local balance, seq = mg_move(currency, '0')
  wg_hset_many(target_key, {'fp', '', 'state', 'tombstone', 'code', '10010',
    'msg', 'order cancelled', 'op', 'tombstone', 'type', '', 'protocol', protocol,
    'player', ARGV[2], 'currency', currency, 'delta', '0', 'bal', balance, 'seq', seq,
    'created_us', wg_now_us(), 'round', '', 'cancelled_by', order_id}, retention_s)
  store_own('applied', '1', 'ok', currency, '0', balance, seq,
    {'cancel_of', cancel_order_id, 'effect', 'tombstone'})
  if end_round then close_round() end
  wg_journal(currency, seq, 'tombstone', '0', balance, '1')
  return {'applied', '1', balance, 'ok', 'tombstone', '0', '0', '0'}
end
if target[2] ~= 'bet' and target[2] ~= 'fee' and target[2] ~= 'tombstone' then
  return {'bad_cancel', '0', '0', ''}
end
if target[1] ~= 'applied' or target[5] then
  -- Already cancelled, tombstoned, or a stored rejection: nothing to refund. The answer gives
  -- the balance in the bet's currency, as the refund of the first cancel did.
  local bet_currency = target[4]
  if not bet_currency or bet_currency == '' then bet_currency = currency end
  local balance, seq = mg_move(bet_currency, '0')
  store_own('applied', '1', 'ok', bet_currency, '0', balance, seq,
    {'cancel_of', cancel_order_id, 'effect', 'noop'})
  if end_round then close_round() end
  wg_journal(bet_currency, seq, 'cancel', '0', balance, '1')
  return {'applied', '1', balance, 'ok', 'noop', '0', '0', '0'}
end
if target[6] then
  return reject('10010', 'order settled')
end
-- Refund the original debit, in the bet's currency.
local bet_currency = target[4]
local refund = wg_negate(target[3])
local new_balance, seq = mg_move(bet_currency, refund)
if not new_balance then
  return {'overflow', '0', wg_get(acct, 'bal:' .. bet_currency), ''}
end
wg_hset_many(target_key, {'cancelled_by', order_id}, retention_s)
store_own('applied', '1', 'ok', bet_currency, refund, new_balance, seq,
  {'cancel_of', cancel_order_id, 'effect', 'refund'})
if end_round then close_round() end
wg_journal(bet_currency, seq, 'cancel', refund, new_balance, '1')
local mismatch = '0'
if money_abs ~= refund then mismatch = '1' end
return {'applied', '1', new_balance, 'ok', 'refund', mismatch, '0', '0'}
