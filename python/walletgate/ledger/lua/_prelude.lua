-- walletgate Lua prelude: prepended to every operation script by walletgate.ledger.scripts.
--
-- Conventions every operation script follows:
--   KEYS[1] = wg:{T:P}:acct     the player's account hash (one hash for all its currencies)
--   KEYS[2] = wg:{J}:journal     the pending-journal stream (same slot as {T:P})
--   KEYS[3..] operation specific, every one of them under the same {T:P} hash tag.
--   ARGV[1] = tenant, ARGV[2] = player, ARGV[3] = currency, ARGV[4] = protocol,
--   ARGV[5] = idempotency key (transaction-key format), ARGV[6] = fingerprint,
--   ARGV[7] = refs (a JSON object, already encoded by Python), ARGV[8] = retention in seconds,
--   ARGV[9..] operation specific.
--
-- Money: every amount is a decimal integer string of units. Lua numbers are doubles and lose
-- exactness above 2^53, so amounts only change through HINCRBY and are compared as strings.
--
-- State changes go through wg_hset/wg_del so that the journal record carries them ("fx"), which
-- lets `walletgate journal rebuild` restore any script's state without knowing the script.

local WG_FX = {}
local WG_EXACT_DOUBLE_LIMIT = 9007199254740992 -- 2^53
-- "wg:{T:P}:" (KEYS[1] ends in "acct"); empty for the few scripts that take no keys.
local WG_PREFIX = ''
if KEYS[1] then WG_PREFIX = string.sub(KEYS[1], 1, #KEYS[1] - 4) end

-- The part of a key after "wg:{T:P}:", which the journal stores so rebuild can re-derive it.
local function wg_suffix(key)
  if string.sub(key, 1, #WG_PREFIX) ~= WG_PREFIX then
    return redis.error_reply('WGKEY key outside the player tag: ' .. key)
  end
  return string.sub(key, #WG_PREFIX + 1)
end

-- Compare two decimal integer strings exactly: -1, 0 or 1.
local function wg_cmp(a, b)
  local a_negative = string.sub(a, 1, 1) == '-'
  local b_negative = string.sub(b, 1, 1) == '-'
  if a == '-0' then a = '0'; a_negative = false end
  if b == '-0' then b = '0'; b_negative = false end
  if a_negative ~= b_negative then
    if a_negative then return -1 else return 1 end
  end
  local sign = 1
  if a_negative then
    a = string.sub(a, 2); b = string.sub(b, 2); sign = -1
  end
  if #a ~= #b then
    if #a < #b then return -sign else return sign end
  end
  if a == b then return 0 end
  if a < b then return -sign else return sign end
end

local function wg_negate(a)
  if a == '0' then return '0' end
  if string.sub(a, 1, 1) == '-' then return string.sub(a, 2) end
  return '-' .. a
end

-- HSET that is also recorded for the journal. ttl_s = 0 means the key does not expire.
local function wg_hset(key, field, value, ttl_s)
  redis.call('HSET', key, field, value)
  if ttl_s and tonumber(ttl_s) > 0 then
    redis.call('EXPIRE', key, ttl_s)
  end
  WG_FX[#WG_FX + 1] = {wg_suffix(key), field, value, tostring(ttl_s or 0)}
end

local function wg_del(key)
  redis.call('DEL', key)
  WG_FX[#WG_FX + 1] = {wg_suffix(key), '', '', 'del'}
end

-- Add delta (a units string) to an integer hash field. Returns the new value as an exact string,
-- or nil when the result would leave the int64 range (nothing is changed then).
local function wg_add(key, field, delta)
  if delta == '0' then
    return redis.call('HGET', key, field) or '0'
  end
  local result = redis.pcall('HINCRBY', key, field, delta)
  if type(result) == 'table' and result.err then
    return nil
  end
  -- The reply is a double: exact below 2^53, where it is formatted directly; beyond that the
  -- field is read back as a string (one more call, only for huge balances).
  local value
  if result < WG_EXACT_DOUBLE_LIMIT and result > -WG_EXACT_DOUBLE_LIMIT then
    value = string.format('%.0f', result)
  else
    value = redis.call('HGET', key, field)
  end
  WG_FX[#WG_FX + 1] = {wg_suffix(key), field, value, '0'}
  return value
end

local function wg_get(key, field)
  return redis.call('HGET', key, field) or '0'
end

-- Microseconds since the epoch, from the server clock, as a string. Read once per call: every
-- record of one atomic call carries the same instant, and TIME is not free.
local WG_NOW_US = nil
local function wg_now_us()
  if not WG_NOW_US then
    local now = redis.call('TIME')
    WG_NOW_US = now[1] .. string.format('%06d', tonumber(now[2]))
  end
  return WG_NOW_US
end

-- Take the account's next journal sequence number (1, 2, 3, ...) as a string. Call it once per
-- stored outcome, before writing the records that should carry the seq.
local function wg_next_seq(currency)
  return tostring(redis.call('HINCRBY', KEYS[1], 'seq:' .. currency, 1))
end

-- Append one journal record carrying every wg_hset/wg_add/wg_del made so far in this call.
-- extra: optional flat list of additional field/value pairs (Midas gifted part, for example).
local function wg_journal(currency, seq, kind, delta, balance_after, result, extra)
  local fields = {
    'ts', wg_now_us(), 'tenant', ARGV[1], 'player', ARGV[2], 'currency', currency,
    'seq', seq, 'kind', kind, 'key', ARGV[5], 'delta', delta, 'bal', balance_after,
    'proto', ARGV[4], 'result', tostring(result), 'fp', ARGV[6], 'refs', ARGV[7],
    'fx', cjson.encode(WG_FX),
  }
  if extra then
    for i = 1, #extra do fields[#fields + 1] = extra[i] end
  end
  redis.call('XADD', KEYS[2], '*', unpack(fields))
  WG_FX = {}
end
