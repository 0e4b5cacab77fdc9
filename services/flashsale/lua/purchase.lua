-- The whole purchase decision, atomically. Every key shares the sale's hash tag {fs:<id>}.
-- KEYS: 1 sale hash, 2 per-user bought hash, 3 reservations hash, 4 idempotency key,
--       5 purchase event stream, 6 alert stream
-- ARGV: 1 user id, 2 quantity, 3 request fingerprint, 4 new reservation id, 5 idempotency ttl (s),
--       6 sale id, 7 reserved_at (ISO 8601, informational), 8 JSON object of extra event fields or '',
--       9 (optional) W3C traceparent of the purchase's span, written into the event only when given
local uid, qty, fp, rid = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]

-- Idempotent replay comes first: an accepted purchase keeps its answer whatever happened since.
local seen = redis.call('GET', KEYS[4])
if seen then
  local sfp, srid, sqty = string.match(seen, '^([^|]*)|([^|]*)|(%d+)$')
  if sfp ~= fp then return {'KEY_REUSED'} end
  return {'REPLAY', srid, tonumber(sqty)}
end

local m = redis.call('HMGET', KEYS[1], 'state', 'starts', 'ends', 'remaining', 'limit',
  'threshold', 'policy', 'low_alerted', 'quantity', 'price', 'sku', 'currency')
local state = m[1]
-- A hash without its configuration or stock (Redis lost data) is not a sale to sell from.
if not state or not m[2] or not m[3] or not m[4] or not m[5] then return {'NOT_FOUND'} end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- A scheduled sale is live from starts_at to the millisecond, before the scheduler catches up.
if not ((state == 'live' or state == 'scheduled') and now >= tonumber(m[2]) and now < tonumber(m[3])) then
  redis.call('HINCRBY', KEYS[1], 'n_not_live', 1)
  return {'NOT_LIVE', state}
end

local remaining = tonumber(m[4])
if remaining <= 0 then
  redis.call('HINCRBY', KEYS[1], 'n_sold_out', 1)
  return {'SOLD_OUT', 0}
end

local limit = tonumber(m[5])
local bought = tonumber(redis.call('HGET', KEYS[2], uid) or '0')
if bought + qty > limit then
  redis.call('HINCRBY', KEYS[1], 'n_limit', 1)
  return {'LIMIT', bought, limit}
end
if remaining < qty then
  redis.call('HINCRBY', KEYS[1], 'n_insufficient', 1)
  return {'INSUFFICIENT', remaining}
end

remaining = remaining - qty
redis.call('HSET', KEYS[1], 'remaining', remaining)
redis.call('HINCRBY', KEYS[1], 'reserved', qty)
redis.call('HINCRBY', KEYS[1], 'n_ok', 1)
redis.call('HINCRBY', KEYS[2], uid, qty)
redis.call('HSET', KEYS[3], rid, uid .. '|' .. qty .. '|reserved')
redis.call('SET', KEYS[4], fp .. '|' .. rid .. '|' .. qty, 'EX', ARGV[5])
local event = {}
if ARGV[8] and ARGV[8] ~= '' then event = cjson.decode(ARGV[8]) end
event.reservation_id = rid
event.sale_id = tonumber(ARGV[6])
event.user_id = uid
event.sku = m[11]
event.quantity = qty
event.unit_price = tonumber(m[10])
event.currency = m[12] or 'USD'
event.reserved_at = ARGV[7]
event.reserved_at_ms = now
if ARGV[9] then event.traceparent = ARGV[9] end
redis.call('XADD', KEYS[5], '*', 'type', 'purchase.reserved', 'v', '1', 'data', cjson.encode(event))

local crossed, sold_out, paused = 0, 0, 0
local threshold = tonumber(m[6])
if threshold > 0 and remaining <= threshold and m[8] ~= '1' then
  crossed = 1
  redis.call('HSET', KEYS[1], 'low_alerted', '1')
  if m[7] == 'alert_and_pause' then
    redis.call('HSET', KEYS[1], 'state', 'paused')
    paused = 1
  end
  redis.call('XADD', KEYS[6], '*', 'type', 'stock.low', 'v', '1', 'data', cjson.encode({
    sale_id = tonumber(ARGV[6]), remaining = remaining, threshold = threshold,
    quantity = tonumber(m[9]), paused = paused, at_ms = now}))
end
if remaining == 0 then
  sold_out = 1
  redis.call('HSET', KEYS[1], 'sold_out_at', now)
  redis.call('HSETNX', KEYS[1], 'first_sold_out_at', now)
  -- One alert per sell-out: units that come back re-arm it only once the stock is above the low-stock
  -- threshold again (release.lua, restock.lua), so a few released units sold again do not repeat it.
  if redis.call('HGET', KEYS[1], 'sold_out_alerted') ~= '1' then
    redis.call('HSET', KEYS[1], 'sold_out_alerted', '1')
    redis.call('XADD', KEYS[6], '*', 'type', 'sale.sold_out', 'v', '1', 'data', cjson.encode({
      sale_id = tonumber(ARGV[6]), quantity = tonumber(m[9]), at_ms = now}))
  end
end
return {'OK', rid, remaining, crossed, sold_out, paused}
