-- admin_adjust: credit or debit an account from the admin API, idempotent on (tenant, ref).
--
-- The ref is the tenant's, but this script sees only its player's keys: admin_claim.lua runs
-- first and answers the conflict when another player's adjustment owns the ref, so "conflict"
-- here is this player's own record with another fingerprint.
--
-- KEYS[1] account hash, KEYS[2] journal stream (prelude)
-- KEYS[3] wg:{T:P}:adm:<ref>        the adjustment's stored outcome
-- KEYS[4] wg:{T:P}:tx:admin:<ref>   read only: where adjustments were kept before they had keys of
--                                   their own. It counts only if its protocol is "admin": a
--                                   transfer tx_id or an order_id may be "admin:<ref>" too.
-- ARGV[1..8] prelude common arguments (key = "admin:<ref>")
-- ARGV[9]  amount_units: signed decimal integer string, non-zero
-- ARGV[10] kind: "adjust" or "save" (save: Midas only, amount > 0; raises save_amt, save_sum,
--          sets first_save to 2)
-- Returns: {outcome, balance_units, seq, state, gen_units}
--   outcome "applied" | "insufficient" (a debit larger than the balance: stored as a rejection,
--   so the same ref and fingerprint keep answering it after the balance grew; a debit of an
--   account that does not exist never gets here: ledger/admin.py refuses it first, storing
--   nothing, as account_exists.lua tells) | "replay" (the stored outcome: balance_units and
--   seq as first returned, state "applied" or "rejected") |
--   "conflict" (ref stored with another fingerprint; nothing written) | "overflow" (the balance,
--   or for Midas the paid part plus the gifted one, would leave int64; not stored, nothing
--   written: like malformed input, a retry is evaluated afresh)
--   state is "applied" or "rejected" (the stored state; "" when nothing is stored).
--   balance_units is the paid part of a Midas account; gen_units its gifted part, which an
--   adjustment leaves as it is ("0" for the other families, and for outcomes stored before
--   gbal was kept). The answer's balance is their sum, as GET account's.
-- Record (hash, TTL = retention): fp, state (applied|rejected), code ("ok" or
--   "insufficient_funds"), op (kind), protocol, player, currency, delta ("0" when rejected),
--   bal (the balance after, or the unchanged balance of a rejection), seq, created_us, and
--   gbal (the gifted part) when the account has one.
-- Journal: kind "adjust" or "save", or "reject" (delta "0", result "insufficient_funds").

local currency = ARGV[3]
local retention_s = ARGV[8]
local amount_units = ARGV[9]
local kind = ARGV[10]
local tx_key = KEYS[3]

local stored = redis.call('HMGET', tx_key, 'fp', 'bal', 'seq', 'state', 'gbal')
if not stored[1] then
  local legacy = redis.call('HMGET', KEYS[4], 'fp', 'bal', 'seq', 'protocol')
  -- Adjustments were kept there only when applied: rejections were not stored then.
  if legacy[4] == 'admin' then stored = {legacy[1], legacy[2], legacy[3], 'applied', nil} end
end
if stored[1] then
  if stored[1] ~= ARGV[6] then
    return {'conflict', '0', '0', '', '0'}
  end
  return {'replay', stored[2], stored[3], stored[4] or 'applied', stored[5] or '0'}
end

-- The gifted part, which only Midas accounts have (nil elsewhere). An adjustment acts on the
-- paid part alone, but its answer (and its stored outcome) reports paid plus gifted.
local gen_units = redis.call('HGET', KEYS[1], 'gen:' .. currency)

-- Store this adjustment's outcome, with the gifted part when the account has one.
local function store(state, code, delta, balance, seq)
  local fields = {
    'fp', ARGV[6], 'state', state, 'code', code, 'op', kind, 'protocol', ARGV[4],
    'player', ARGV[2], 'currency', currency, 'delta', delta, 'bal', balance, 'seq', seq,
    'created_us', wg_now_us(),
  }
  if gen_units then
    fields[#fields + 1] = 'gbal'
    fields[#fields + 1] = gen_units
  end
  wg_hset_many(tx_key, fields, retention_s)
end

local balance_field = 'bal:' .. currency
if wg_cmp(amount_units, '0') < 0 then
  local balance = wg_get(KEYS[1], balance_field)
  if wg_cmp(balance, wg_negate(amount_units)) < 0 then
    local seq = wg_next_seq(currency)
    store('rejected', 'insufficient_funds', '0', balance, seq)
    wg_journal(currency, seq, 'reject', '0', balance, 'insufficient_funds')
    return {'insufficient', balance, seq, 'rejected', gen_units or '0'}
  end
end
if gen_units and wg_cmp(amount_units, '0') > 0
    and not wg_total_fits({wg_get(KEYS[1], balance_field), gen_units, amount_units}) then
  return {'overflow', wg_get(KEYS[1], balance_field), '0', '', gen_units}
end
local balance_units = wg_add(KEYS[1], balance_field, amount_units)
if not balance_units then
  return {'overflow', wg_get(KEYS[1], balance_field), '0', '', gen_units or '0'}
end
if kind == 'save' then
  -- save_amt and save_sum can only overflow after the balance did, which was checked above.
  wg_add(KEYS[1], 'save_amt:' .. currency, amount_units)
  wg_add(KEYS[1], 'save_sum:' .. currency, amount_units)
  wg_hset(KEYS[1], 'first_save:' .. currency, '2', 0)
end
local seq = wg_next_seq(currency)
store('applied', 'ok', amount_units, balance_units, seq)
wg_journal(currency, seq, kind, amount_units, balance_units, 'ok')
return {'applied', balance_units, seq, 'applied', gen_units or '0'}
