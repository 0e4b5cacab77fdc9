-- Mirror a SKU's committed `available` into Redis, unless a newer ledger entry already wrote it.
-- KEYS[1] stock hash; ARGV[1] available, ARGV[2] ledger sequence of the change.
local seen = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if tonumber(ARGV[2]) > seen then
  redis.call('HSET', KEYS[1], 'available', ARGV[1], 'seq', ARGV[2])
  return 1
end
return 0
