-- Rebuild a template's claim counters from the wallet record after Redis lost them (a crash without
-- persistence). Only when the template hash is gone: a live template's counters are never overwritten.
-- `restored_at_ms` marks the rebuild: the claim stream holds only claims after it, so a later check for
-- claims Redis lost compares the stream with the wallets' claims after that moment only.
-- KEYS: 1 template hash, 2 per-user claims hash
-- ARGV: 1 claimed (coupons recorded), 2 number of configuration pairs N, then N field/value pairs,
--       then (user id, coupons held) pairs
if redis.call('HEXISTS', KEYS[1], 'total') == 1 then return {'PRESENT'} end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'claimed', ARGV[1])
local clock = redis.call('TIME')
redis.call('HSET', KEYS[1], 'restored_at_ms', tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000))
local first = 3 + 2 * tonumber(ARGV[2])
for i = 3, first - 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
for i = first, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return {'RESTORED'}
