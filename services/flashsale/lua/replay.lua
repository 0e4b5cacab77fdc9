-- The stored answer of a purchase, read-only: the sold-out path's one look before it says SOLD_OUT.
-- A sold-out sale decides nothing new, but a replay of an accepted purchase keeps its first answer.
-- KEYS: 1 idempotency key (the sale's hash tag)
-- ARGV: 1 request fingerprint
local seen = redis.call('GET', KEYS[1])
if not seen then return {'NONE'} end
local sfp, srid, sqty = string.match(seen, '^([^|]*)|([^|]*)|(%d+)$')
if sfp ~= ARGV[1] then return {'KEY_REUSED'} end
return {'REPLAY', srid, tonumber(sqty)}
