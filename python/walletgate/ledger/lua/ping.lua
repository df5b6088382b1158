#!lua flags=allow-oom
-- ping: a readiness probe that proves the server answers and runs walletgate's scripts, and
-- that it is a primary. Without the no-writes flag the script declares that it may write, so
-- Redis refuses it before it runs on a read-only replica (READONLY: a primary demoted by a
-- failover that kept our connection), where every money script would fail too. allow-oom keeps
-- a Redis over maxmemory ready: reads still work there, and the operator alerts on memory.
--
-- KEYS: none, or on a cluster one key (never read) in a slot of the node to probe: a command
-- with a key makes the node check that the cluster is up and that it owns the slot.
-- ARGV: none.
-- Returns: the server's time, unix microseconds (a string), from which /readyz reports how far
-- the server's clock is from the gateway's (the call deadlines of the prelude rely on them
-- agreeing).
return wg_now_us()
