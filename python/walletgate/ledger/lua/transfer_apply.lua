-- transfer_apply: a MINI.GAME transfer-wallet transfer into (amount > 0) or out of (amount < 0)
-- the game wallet, idempotent on (appid, tx_id) with fingerprint (player, currency, amount).
--
-- KEYS[1] account hash, KEYS[2] journal stream (prelude), KEYS[3] wg:{T:P}:tx:<tx_id>
-- ARGV[1..8] prelude common arguments (protocol "transfer", key = tx_id)
-- ARGV[9]  amount_units: signed decimal integer string, non-zero
-- ARGV[10] tx_id (stored so the record renders the original answer)
-- ARGV[11] mode:
--          "apply"  check and commit in this call (the HTTP path; one round trip);
--          "admit"  only write a pending marker (state 2), kept pending_ttl_s, that a later
--                   "commit" call replaces atomically; nothing moves and nothing is journaled;
--          "commit" like "apply", but also commits a pending marker with the same fingerprint
--                   (keeping its ptx_id); "apply" answers such a marker with state "pending".
-- ARGV[12] pending_ttl_s: lifetime of a pending marker
-- ARGV[13] player_code: decimal digits that identify the player within the tenant (ptx_id)
--
-- ptx_id = <digits of n> .. n .. player_code, where n is the player's transfer counter (field
-- ptx_n of the account hash, 1, 2, 3, ...; at most 999999999). The leading digit tells where n
-- ends and player_code is injective per player, so ptx_id is unique per tenant without a
-- tenant-wide counter (which would sit outside the player's hash tag).
--
-- Returns: {outcome, state, code, ptx_id, balance_units}
--   outcome "applied" | "rejected" (a debit larger than the balance; stored as state 0, code
--   10001) | "pending" (a pending marker with the same fingerprint, or one just admitted) |
--   "replay" (state/code/ptx_id/balance are the stored ones) | "conflict" (tx_id reused with
--   another fingerprint) | "unknown" (no account: the player is not known) | "overflow" (the
--   balance would leave int64) | "exhausted" (the player's ptx counter is used up); the last four
--   write nothing.
--   state "applied" | "rejected" | "pending" (for replays, the stored state).

local currency = ARGV[3]
local protocol = ARGV[4]
local fp = ARGV[6]
local retention_s = ARGV[8]
local amount_units = ARGV[9]
local tx_id = ARGV[10]
local mode = ARGV[11]
local pending_ttl_s = ARGV[12]
local player_code = ARGV[13]
local account_key = KEYS[1]
local tx_key = KEYS[3]
local balance_field = 'bal:' .. currency
local PTX_MAX = '999999999'

local stored = redis.call('HMGET', tx_key, 'fp', 'state', 'code', 'ptx_id', 'bal')
local pending_ptx = nil
if stored[1] then
  if stored[1] ~= fp then
    return {'conflict', '', '', '', '0'}
  end
  if stored[2] ~= 'pending' then
    return {'replay', stored[2], stored[3], stored[4], stored[5]}
  end
  if mode ~= 'commit' then
    return {'pending', 'pending', '0', stored[4], wg_get(account_key, balance_field)}
  end
  pending_ptx = stored[4]
end

if redis.call('EXISTS', account_key) == 0 then
  return {'unknown', '', '', '', '0'}
end
if not pending_ptx and wg_cmp(wg_get(account_key, 'ptx_n'), PTX_MAX) >= 0 then
  return {'exhausted', '', '', '', '0'}
end

local function ptx_from(n)
  return tostring(#n) .. n .. player_code
end

if mode == 'admit' then
  -- Not a stored outcome: plain writes, no journal record. The counter value is recorded in
  -- the journal by the commit (or by any later stored outcome of this player).
  local ptx_id = ptx_from(tostring(redis.call('HINCRBY', account_key, 'ptx_n', 1)))
  redis.call('HSET', tx_key, 'fp', fp, 'state', 'pending', 'code', '0', 'op', 'transfer',
    'protocol', protocol, 'player', ARGV[2], 'currency', currency, 'amount', amount_units,
    'delta', '0', 'tx_id', tx_id, 'ptx_id', ptx_id, 'created_us', wg_now_us())
  redis.call('EXPIRE', tx_key, pending_ttl_s)
  return {'pending', 'pending', '0', ptx_id, wg_get(account_key, balance_field)}
end

local balance_units = wg_get(account_key, balance_field)
local state, code, delta, kind = 'applied', '0', amount_units, 'transfer'
if wg_cmp(amount_units, '0') < 0 and wg_cmp(balance_units, wg_negate(amount_units)) < 0 then
  state, code, delta, kind = 'rejected', '10001', '0', 'reject'
else
  local after = wg_add(account_key, balance_field, amount_units)
  if not after then
    return {'overflow', '', '', '', balance_units}
  end
  balance_units = after
end

local ptx_id
if pending_ptx then
  ptx_id = pending_ptx
  -- Record the counter as it stands, so a rebuild never hands out the admitted number again.
  wg_hset(account_key, 'ptx_n', redis.call('HGET', account_key, 'ptx_n') or '0', 0)
else
  ptx_id = ptx_from(wg_add(account_key, 'ptx_n', '1'))
end

local seq = wg_next_seq(currency)
wg_hset_many(tx_key, {
  'fp', fp, 'state', state, 'code', code, 'op', 'transfer', 'protocol', protocol,
  'player', ARGV[2], 'currency', currency, 'amount', amount_units, 'delta', delta,
  'bal', balance_units, 'seq', seq, 'tx_id', tx_id, 'ptx_id', ptx_id,
  'created_us', wg_now_us(),
}, retention_s)
wg_journal(currency, seq, kind, delta, balance_units, code)
return {state, state, code, ptx_id, balance_units}
