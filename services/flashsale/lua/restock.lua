-- Add units to a sale's stock; re-arm the low-stock and sold-out alerts when back above the threshold.
-- KEYS: 1 sale hash, 2 operation marker (the same restock is applied once, however often it is retried)
-- ARGV: 1 units to add, 2 new threshold (units)
if redis.call('HEXISTS', KEYS[1], 'remaining') == 0 then return {'NOT_FOUND'} end
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', 604800) == false then return {'DONE'} end
local add = tonumber(ARGV[1])
local remaining = redis.call('HINCRBY', KEYS[1], 'remaining', add)
local quantity = redis.call('HINCRBY', KEYS[1], 'quantity', add)
redis.call('HSET', KEYS[1], 'threshold', ARGV[2])
if remaining > tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'low_alerted', '0', 'sold_out_alerted', '0') end
if remaining > 0 then redis.call('HDEL', KEYS[1], 'sold_out_at') end
return {'OK', remaining, quantity}
