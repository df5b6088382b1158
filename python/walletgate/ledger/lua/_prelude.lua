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
--   After those, every caller (the runners) appends one more argument, the call's deadline in
--   unix microseconds; the prelude takes it off ARGV and refuses a call that starts after it
--   (error WGLATE, nothing written).
--
-- Money: every amount is a decimal integer string of units. Lua numbers are doubles and lose
-- exactness above 2^53, so amounts change only through HINCRBY (which also detects int64
-- overflow), never by Lua arithmetic, and are compared as strings (wg_cmp).
--
-- State changes go through wg_hset/wg_hset_many/wg_del/wg_add so that the journal record carries
-- them ("fx"), which lets `walletgate journal rebuild` restore any script's state without knowing
-- the script.
--
-- Cost: these scripts run on every wallet request, and in Redis' Lua each C function call
-- (string.format and pattern matching above all) and each new string (hashed over all its bytes)
-- or table is dear, so the helpers here make few: fx entries are JSON text concatenated as the
-- changes are made, joined once by wg_journal (no nested tables for cjson.encode), and a key
-- gets one EXPIRE per call.

-- The fx entries made so far in this call as JSON text, each item one or more whole entries led
-- by its separator: '[' for the first item, ',' after that ('[["acct","bal:USD","5","0"]',
-- ',["tx:o1","state","ok","60"],["tx:o1","code","1","60"]'), so that wg_journal only appends
-- ']' and joins. A script may reset it (WG_FX = {}) to drop the changes it undid.
local WG_FX = {}
-- key -> TTL (seconds) that wg_expire already set in this call: setting it again within
-- the call is redundant. A script that changes a key's TTL or deletes it by a plain redis.call
-- must not write it through wg_hset/wg_hset_many afterwards.
local WG_EXPIRED = {}
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

-- True when text can go into JSON between quotes as it is: cjson (which escapes quotes,
-- backslashes, control characters and '/') leaves it unchanged. Far cheaper than a pattern.
local function wg_plain(text)
  return #cjson.encode(text) == #text + 2
end

-- Record fx entries [suffix(key), field, value, ttl] for the field/value pairs of flat, in order.
local function wg_fx(key, flat, ttl)
  local suffix = wg_suffix(key)
  -- The usual case: strings with nothing to escape (one check for all), one concatenation each.
  local plain = type(suffix) == 'string' and wg_plain(suffix .. ttl .. table.concat(flat))
  local n = #WG_FX
  for i = 1, #flat, 2 do
    local field, value = flat[i], flat[i + 1]
    local separator = ','
    if n == 0 then separator = '[' end
    n = n + 1
    if plain and type(field) == 'string' and type(value) == 'string' then
      WG_FX[n] = separator .. '["' .. suffix .. '","' .. field .. '","' .. value .. '","' .. ttl
        .. '"]'
    else
      -- As cjson.encode encoded the entry before (a number stays a JSON number).
      WG_FX[n] = separator .. '[' .. cjson.encode(suffix) .. ',' .. cjson.encode(field) .. ','
        .. cjson.encode(value) .. ',' .. cjson.encode(ttl) .. ']'
    end
  end
end

-- EXPIRE key ttl_s (seconds; 0 or nil: the key does not expire), once per key and TTL per call.
local function wg_expire(key, ttl_s)
  if not ttl_s or WG_EXPIRED[key] == ttl_s then
    return
  end
  if tonumber(ttl_s) > 0 then
    redis.call('EXPIRE', key, ttl_s)
  end
  WG_EXPIRED[key] = ttl_s
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

-- Whether non-negative decimal integer strings add up to at most int64's maximum. A Midas
-- account answers the sum of two parts (paid and gifted), each an int64 field of its own, so a
-- credit to either must keep the sum in range too. Doubles only decide the clear cases, far
-- below the bound (a sum under 2^62 is off by at most a few hundred units there); near it the
-- strings are added digit by digit, exactly.
local WG_INT64_MAX = '9223372036854775807'
local function wg_total_fits(given)
  -- Only non-negative parts add up here; a negative one (none occurs: no part goes below 0)
  -- is left out, which can only make the answer stricter.
  local values = {}
  for i = 1, #given do
    if given[i] ~= '' and string.sub(given[i], 1, 1) ~= '-' then
      values[#values + 1] = given[i]
    end
  end
  local approximate = 0
  for i = 1, #values do approximate = approximate + tonumber(values[i]) end
  if approximate < 4.6e18 then return true end
  local digits, carry = {}, 0
  local longest = 0
  for i = 1, #values do longest = math.max(longest, #values[i]) end
  for place = 0, longest - 1 do
    local digit = carry
    for i = 1, #values do
      local position = #values[i] - place
      if position >= 1 then digit = digit + string.byte(values[i], position) - 48 end
    end
    digits[longest - place] = digit % 10
    carry = math.floor(digit / 10)
  end
  local total = table.concat(digits)
  if carry > 0 then total = tostring(carry) .. total end
  return wg_cmp(total, WG_INT64_MAX) <= 0
end

local function wg_negate(a)
  if a == '0' then return '0' end
  if string.sub(a, 1, 1) == '-' then return string.sub(a, 2) end
  return '-' .. a
end

-- HSET that is also recorded for the journal. ttl_s = 0 means the key does not expire.
local function wg_hset(key, field, value, ttl_s)
  redis.call('HSET', key, field, value)
  wg_expire(key, ttl_s)
  wg_fx(key, {field, value}, tostring(ttl_s or 0))
end

-- wg_hset of several fields (flat = {field, value, ...}) in one HSET and one EXPIRE; the fx
-- entries are those of one wg_hset per field, in order.
local function wg_hset_many(key, flat, ttl_s)
  redis.call('HSET', key, unpack(flat))
  wg_expire(key, ttl_s)
  wg_fx(key, flat, tostring(ttl_s or 0))
end

local function wg_del(key)
  redis.call('DEL', key)
  WG_EXPIRED[key] = nil
  local separator = ','
  if #WG_FX == 0 then separator = '[' end
  WG_FX[#WG_FX + 1] = separator .. '[' .. cjson.encode(wg_suffix(key)) .. ',"","","del"]'
end

-- HINCRBY key field delta (a units string, not "0"), not recorded for the journal: the new value
-- as an exact string, or nil when it would leave the int64 range (nothing is changed then).
-- Any other refusal is raised as it came: a Redis that refuses writes (READONLY after a
-- failover, OOM, MISCONF, NOREPLICAS) keeps its error code, so the gateway answers "unavailable,
-- retry" and not a business outcome; Redis refuses only a script's first write for those, so
-- nothing of this call was written.
local function wg_hincrby(key, field, delta)
  local result = redis.pcall('HINCRBY', key, field, delta)
  if type(result) == 'table' and result.err then
    if string.find(result.err, 'would overflow', 1, true) then
      return nil
    end
    error(result)
  end
  -- The reply reaches Lua as a double: exact below 2^53, where it is printed directly; beyond
  -- that the field is read back as Redis wrote it (one more call, only for huge balances).
  if result < WG_EXACT_DOUBLE_LIMIT and result > -WG_EXACT_DOUBLE_LIMIT then
    return string.format('%.0f', result)
  end
  return redis.call('HGET', key, field)
end

-- Add delta (a units string) to an integer hash field, recorded for the journal. Returns the new
-- value as an exact string, or nil when the result would leave the int64 range (nothing is
-- changed then).
local function wg_add(key, field, delta)
  if delta == '0' then
    return redis.call('HGET', key, field) or '0'
  end
  local value = wg_hincrby(key, field, delta)
  if value then
    wg_fx(key, {field, value}, '0')
  end
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
    -- The seconds, then the microseconds on 6 digits (no string.format: it is slow).
    local micros = now[2]
    if #micros < 6 then micros = string.rep('0', 6 - #micros) .. micros end
    WG_NOW_US = now[1] .. micros
  end
  return WG_NOW_US
end

-- The caller's deadline (unix µs), which the runners append after the script's own ARGV: it is
-- taken off ARGV here, so the scripts see only their own arguments. A call that Redis runs only
-- after it (it waited in a stalled server, or in a frozen primary that resumed after its
-- failover) was answered "busy, nothing applied" by the gateway, or soon will be: it must write
-- nothing.
local WG_DEADLINE_US = table.remove(ARGV)
if not WG_DEADLINE_US or not string.find(WG_DEADLINE_US, '^%d+$') then
  return redis.error_reply('WGARG the last argument must be the deadline (unix microseconds)')
end
if tonumber(wg_now_us()) > tonumber(WG_DEADLINE_US) then
  return redis.error_reply('WGLATE the call started at ' .. wg_now_us() .. ' (server clock, unix us), '
    .. 'after its deadline ' .. WG_DEADLINE_US .. '; nothing written')
end

-- Take the account's next journal sequence number (1, 2, 3, ...) as a string. Call it once per
-- stored outcome, before writing the records that should carry the seq.
local function wg_next_seq(currency)
  return tostring(redis.call('HINCRBY', KEYS[1], 'seq:' .. currency, 1))
end

-- Append one journal record carrying every wg_hset/wg_add/wg_del made so far in this call.
-- extra: optional flat list of additional field/value pairs (Midas gifted part, for example).
local function wg_journal(currency, seq, kind, delta, balance_after, result, extra)
  if type(result) ~= 'string' then result = tostring(result) end
  -- '{}' for no entry, as cjson.encode gave for an empty table (the readers accept both).
  local fx = '{}'
  if #WG_FX > 0 then
    WG_FX[#WG_FX + 1] = ']'
    fx = table.concat(WG_FX)
  end
  if extra then
    local fields = {
      'ts', wg_now_us(), 'tenant', ARGV[1], 'player', ARGV[2], 'currency', currency,
      'seq', seq, 'kind', kind, 'key', ARGV[5], 'delta', delta, 'bal', balance_after,
      'proto', ARGV[4], 'result', result, 'fp', ARGV[6], 'refs', ARGV[7], 'fx', fx,
    }
    for i = 1, #extra do fields[#fields + 1] = extra[i] end
    redis.call('XADD', KEYS[2], '*', unpack(fields))
  else
    -- The usual case: no table to build and unpack.
    redis.call('XADD', KEYS[2], '*', 'ts', wg_now_us(), 'tenant', ARGV[1], 'player', ARGV[2],
      'currency', currency, 'seq', seq, 'kind', kind, 'key', ARGV[5], 'delta', delta,
      'bal', balance_after, 'proto', ARGV[4], 'result', result, 'fp', ARGV[6],
      'refs', ARGV[7], 'fx', fx)
  end
  WG_FX = {}
end
