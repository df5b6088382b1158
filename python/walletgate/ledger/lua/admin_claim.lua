-- admin_claim: claim an adjustment's ref for its tenant, run before admin_adjust, so that an
-- adjustment is idempotent on (tenant, ref) although its stored outcome lives under its player's
-- hash tag (wg:{T:P}:adm:<ref>), where the same ref used for another player is never seen.
--
-- KEYS[1] wg:{adm:<tenant>}:claim:<ref>  the claim: a string "<fingerprint> <token>", the
--                                        fingerprint (player, currency, amount, kind) of the
--                                        adjustment that owns the ref and the token of the last
--                                        call that took it. It has its own hash tag and is the
--                                        script's only key, so the script runs unchanged on
--                                        Redis Cluster. A claim restored by `journal rebuild`
--                                        holds the fingerprint alone.
-- ARGV[1] fingerprint: admin_adjust's ARGV[6]
-- ARGV[2] action: "claim" or "release"
-- ARGV[3] token: random, one per adjust call (no space)
-- ARGV[4] retention_s: the adjustment record's retention ("claim" only)
-- Returns: {outcome}
--   claim:   "claimed" (there was no claim; it now holds ARGV[1] and ARGV[3]) | "owned" (it
--            already holds ARGV[1]: a retry or a replay, or a retry after a failure between
--            this script and admin_adjust, which then applies; the token becomes ARGV[3]) |
--            "conflict" (another fingerprint owns the ref; nothing written)
--   release: "released" (the claim holds ARGV[1] and ARGV[3], and is deleted) | "kept".
--            Sent after an admin_adjust outcome that stores nothing (an overflow, or a
--            conflict with an adjustment stored before claims existed), so the claim never
--            outlives the outcome it stands for and a retry is evaluated afresh. The token
--            keeps a late release from dropping the claim that an identical call took over
--            meanwhile, and may have applied.
--
-- The claim is not journaled: it is no account state, and the prelude's journal helpers only
-- take keys under one player's tag. It goes through plain redis.call for that reason.

local claim_key = KEYS[1]
local fp = ARGV[1]
local action = ARGV[2]
local token = ARGV[3]

local owner = redis.call('GET', claim_key)
local owner_fp = owner and string.match(owner, '^[^ ]*')
if action == 'release' then
  if owner == fp .. ' ' .. token then
    redis.call('DEL', claim_key)
    return {'released'}
  end
  return {'kept'}
end
if owner and owner_fp ~= fp then
  return {'conflict'}
end
-- KEEPTTL: a retry takes the claim over without stretching the ref's retention.
if owner then
  redis.call('SET', claim_key, fp .. ' ' .. token, 'KEEPTTL')
  return {'owned'}
end
redis.call('SET', claim_key, fp .. ' ' .. token, 'EX', ARGV[4])
return {'claimed'}
