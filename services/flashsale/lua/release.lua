-- Give a reservation's units back exactly once (order cancelled, expired or failed).
-- KEYS: 1 sale hash, 2 per-user bought hash, 3 reservations hash
-- ARGV: 1 reservation id
local r = redis.call('HGET', KEYS[3], ARGV[1])
if not r then return {'UNKNOWN'} end
local uid, qty, st = string.match(r, '^(.*)|(%d+)|(%a+)$')
if st ~= 'reserved' then return {'ALREADY', st} end
qty = tonumber(qty)
redis.call('HSET', KEYS[3], ARGV[1], uid .. '|' .. qty .. '|released')
local remaining = redis.call('HINCRBY', KEYS[1], 'remaining', qty)
redis.call('HINCRBY', KEYS[1], 'reserved', -qty)
redis.call('HINCRBY', KEYS[1], 'released', qty)
if redis.call('HINCRBY', KEYS[2], uid, -qty) <= 0 then redis.call('HDEL', KEYS[2], uid) end
-- Back above the threshold: the next crossing alerts again, and so does the next sell-out.
local threshold = tonumber(redis.call('HGET', KEYS[1], 'threshold') or '0')
if remaining > threshold then redis.call('HSET', KEYS[1], 'low_alerted', '0', 'sold_out_alerted', '0') end
local was_sold_out = 0
if remaining == qty then
  was_sold_out = 1
  redis.call('HDEL', KEYS[1], 'sold_out_at')
end
return {'RELEASED', remaining, was_sold_out}
