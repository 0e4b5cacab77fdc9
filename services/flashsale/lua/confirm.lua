-- A paid order turns its reservation into a sale, exactly once.
-- KEYS: 1 sale hash, 2 reservations hash
-- ARGV: 1 reservation id
local r = redis.call('HGET', KEYS[2], ARGV[1])
if not r then return {'UNKNOWN'} end
local uid, qty, st = string.match(r, '^(.*)|(%d+)|(%a+)$')
if st ~= 'reserved' then return {'ALREADY', st} end
qty = tonumber(qty)
redis.call('HSET', KEYS[2], ARGV[1], uid .. '|' .. qty .. '|paid')
redis.call('HINCRBY', KEYS[1], 'reserved', -qty)
redis.call('HINCRBY', KEYS[1], 'sold', qty)
return {'CONFIRMED', qty}
