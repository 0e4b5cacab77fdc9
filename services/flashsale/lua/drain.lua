-- An ended sale gives its unsold units back to the warehouse: remaining -> returned, in one step.
-- A reservation released after the end puts units back into remaining; the next drain returns them.
-- KEYS: 1 sale hash
-- Returns: {'OK', returned, reserved, sold} or {'NOT_FOUND'} / {'NOT_ENDED'}
if redis.call('HEXISTS', KEYS[1], 'remaining') == 0 then return {'NOT_FOUND'} end
if redis.call('HGET', KEYS[1], 'state') ~= 'ended' then return {'NOT_ENDED'} end
local left = tonumber(redis.call('HGET', KEYS[1], 'remaining'))
if left > 0 then
  redis.call('HSET', KEYS[1], 'remaining', 0)
  redis.call('HINCRBY', KEYS[1], 'returned', left)
end
return {'OK', tonumber(redis.call('HGET', KEYS[1], 'returned') or '0'),
  tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0'), tonumber(redis.call('HGET', KEYS[1], 'sold') or '0')}
