-- Load a sale's configuration into Redis. Stock is set only the first time (or when reset is
-- asked for and nothing was sold yet): re-warming must never hand out units a second time.
-- KEYS: 1 sale hash
-- ARGV: 1 reset (0/1), 2 quantity, 3 incarnation (unique per sale record), then configuration pairs
local exists = redis.call('HEXISTS', KEYS[1], 'remaining') == 1
local qty = tonumber(ARGV[2])
-- Same id, other sale (the database was recreated while Redis kept its data): never adopt its stock.
if exists and redis.call('HGET', KEYS[1], 'incarnation') ~= ARGV[3] then return {'STALE'} end
if exists and ARGV[1] == '1' then
  local taken = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
    + tonumber(redis.call('HGET', KEYS[1], 'sold') or '0')
    + tonumber(redis.call('HGET', KEYS[1], 'released') or '0')
  if taken > 0 then return {'STARTED'} end
  redis.call('HSET', KEYS[1], 'remaining', qty, 'quantity', qty, 'low_alerted', '0', 'sold_out_alerted', '0')
end
if not exists then
  redis.call('HSET', KEYS[1], 'remaining', qty, 'quantity', qty, 'reserved', 0, 'sold', 0,
    'released', 0, 'low_alerted', '0', 'incarnation', ARGV[3])
end
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return {'OK', tonumber(redis.call('HGET', KEYS[1], 'remaining'))}
