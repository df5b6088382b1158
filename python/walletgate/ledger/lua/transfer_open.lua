-- transfer_open: authorize's account step: make the player known with a zero balance in the
-- merchant's default currency (first use only) and read that balance. Moves no money, so it
-- writes no idempotency record and no journal record.
--
-- KEYS[1] wg:{T:P}:acct
-- ARGV[1] default currency
-- Returns: {balance_units}

redis.call('HSETNX', KEYS[1], 'known', '1')
redis.call('HSETNX', KEYS[1], 'bal:' .. ARGV[1], '0')
return {redis.call('HGET', KEYS[1], 'bal:' .. ARGV[1])}
