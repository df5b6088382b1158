-- ping: a readiness probe that proves the server answers and runs walletgate's scripts.
--
-- KEYS: none. ARGV: none.
-- Returns: 1
return 1
