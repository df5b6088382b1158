#!lua flags=no-writes,allow-oom
-- account_exists: whether a player has an account hash (a balance, a seq, or "known" from a
-- session), read before an admin debit: a debit of an account that does not exist is refused
-- without storing anything, as for an unknown player. Accounts are never deleted, so one
-- found here still exists when admin_adjust runs.
--
-- KEYS[1] wg:{T:P}:acct
-- ARGV: none
-- Returns: 1 or 0

return redis.call('EXISTS', KEYS[1])
