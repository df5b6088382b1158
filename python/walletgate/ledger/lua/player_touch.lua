-- player_touch: make a player known to a tenant (a session was registered for it).
--
-- KEYS[1] wg:{T:P}:acct
-- ARGV[1] currency, ARGV[2] "1" to also create a zero balance for that currency
-- Returns: 1

redis.call('HSETNX', KEYS[1], 'known', '1')
if ARGV[2] == '1' then
  redis.call('HSETNX', KEYS[1], 'bal:' .. ARGV[1], '0')
end
return 1
