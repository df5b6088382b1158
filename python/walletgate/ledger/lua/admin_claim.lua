-- admin_claim: claim an adjustment's ref for its tenant, run before admin_adjust, so that an
-- adjustment is idempotent on (tenant, ref) although its stored outcome lives under its player's
-- hash tag (wg:{T:P}:adm:<ref>), where the same ref used for another player is never seen.
--
-- KEYS[1] wg:{adm:<tenant>}:claim:<ref>  the claim: a string holding the fingerprint (player,
--                                        currency, amount, kind) of the adjustment that owns the
--                                        ref. It has its own hash tag and is the script's only
--                                        key, so the script runs unchanged on Redis Cluster.
-- ARGV[1] fingerprint: admin_adjust's ARGV[6]
-- ARGV[2] action: "claim" or "release"
-- ARGV[3] retention_s: the adjustment record's retention ("claim" only)
-- Returns: {outcome}
--   claim:   "claimed" (there was no claim; it now holds ARGV[1]) | "owned" (it already holds
--            ARGV[1]: a retry or a replay, or a retry after a failure between this script and
--            admin_adjust, which then applies) | "conflict" (another fingerprint owns the ref;
--            nothing written)
--   release: "released" (the claim held ARGV[1] and is deleted) | "kept" (it held another
--            fingerprint, or nothing). Sent after an admin_adjust outcome that stores nothing
--            ("overflow", or "conflict" with an adjustment stored before claims existed), so
--            the claim never outlives the outcome it stands for and a retry is evaluated afresh.
--
-- The claim is not journaled: it is no account state, and the prelude's journal helpers only
-- take keys under one player's tag. It goes through plain redis.call for that reason.

local claim_key = KEYS[1]
local fp = ARGV[1]
local action = ARGV[2]

local owner = redis.call('GET', claim_key)
if action == 'release' then
  if owner == fp then
    redis.call('DEL', claim_key)
    return {'released'}
  end
  return {'kept'}
end
if not owner then
  redis.call('SET', claim_key, fp, 'EX', ARGV[3])
  return {'claimed'}
end
if owner ~= fp then
  return {'conflict'}
end
return {'owned'}
