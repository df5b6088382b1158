#!lua
-- ping: a readiness probe that proves the server answers and runs walletgate's scripts, and
-- that it would take writes. The shebang without flags declares a script that may write, so
-- Redis refuses it before it runs on a read-only replica (READONLY: a primary demoted by a
-- failover that kept our connection) and over maxmemory (OOM): the money scripts would fail
-- there too, so the gateway is not ready.
--
-- KEYS: none. ARGV: none.
-- Returns: 1
return 1
