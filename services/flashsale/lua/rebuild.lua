-- Rebuild a sale's counters from the order record (reconciliation's repair mode), atomically.
-- The order record says which reservations hold units (reserved), were paid (sold) or gave them back
-- (released); where Redis is already further along (paid or released after the record was read), Redis's
-- state stands. Reservations only Redis holds are kept as they are: they are real. Then:
--   remaining = quantity - returned - reserved - sold
-- A negative remaining (more units promised than exist) is never "fixed" by selling less than zero:
-- remaining becomes 0 and the script reports the excess for a human.
-- KEYS: 1 sale hash, 2 per-user bought hash, 3 reservations hash
-- ARGV: 1 incarnation, 2 quantity, 3 returned, 4 number of configuration pairs N,
--       then N field/value pairs, then (reservation id, user id, quantity, stock) per known reservation
local quantity, returned, ncfg = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local before = tonumber(redis.call('HGET', KEYS[1], 'remaining') or '-1')
-- What Redis holds now: reservation id -> {user, quantity, state}.
local held = {}
local current = redis.call('HGETALL', KEYS[3])
for j = 1, #current, 2 do
  local uid, qty, st = string.match(current[j + 1], '^(.*)|(%d+)|(%a+)$')
  if uid then held[current[j]] = {uid, tonumber(qty), st} end
end
-- Each reservation's state is the later of the record's and Redis's: a state never moves backwards
-- (Redis may already have applied a payment or a release the record snapshot was taken before).
local state_of = {}
local owner = {}
local units = {}
local first = 5 + 2 * ncfg
for i = first, #ARGV, 4 do
  local rid, uid, qty, stock = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  local st = stock == 'sold' and 'paid' or stock
  local h = held[rid]
  if st == 'reserved' and h and h[3] ~= 'reserved' then st = h[3] end
  state_of[rid], owner[rid], units[rid] = st, uid, qty
end
-- Reservations only Redis knows (accepted, order not created yet; or paid before the snapshot was sent
-- back): they are real and count as Redis says.
local in_flight = 0
for rid, h in pairs(held) do
  if not state_of[rid] then
    state_of[rid], owner[rid], units[rid] = h[3], h[1], h[2]
    if h[3] == 'reserved' then in_flight = in_flight + h[2] end
  end
end
local bought = {}
local reserved, sold, released = 0, 0, 0
for rid, st in pairs(state_of) do
  local qty, uid = units[rid], owner[rid]
  if st == 'reserved' then
    reserved = reserved + qty
    bought[uid] = (bought[uid] or 0) + qty
  elseif st == 'paid' then
    sold = sold + qty
    bought[uid] = (bought[uid] or 0) + qty
  else
    released = released + qty
  end
end
local remaining = quantity - returned - reserved - sold
local excess = 0
if remaining < 0 then
  excess = -remaining
  remaining = 0
end
for rid, st in pairs(state_of) do
  redis.call('HSET', KEYS[3], rid, owner[rid] .. '|' .. units[rid] .. '|' .. st)
end
redis.call('DEL', KEYS[2])
for uid, qty in pairs(bought) do
  redis.call('HSET', KEYS[2], uid, qty)
end
redis.call('HSET', KEYS[1], 'remaining', remaining, 'quantity', quantity, 'reserved', reserved, 'sold', sold,
  'returned', returned, 'released', released, 'incarnation', ARGV[1])
for i = 5, first - 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local threshold = tonumber(redis.call('HGET', KEYS[1], 'threshold') or '0')
-- Already at or below the threshold: the alert went out before (or is moot); do not repeat it.
redis.call('HSET', KEYS[1], 'low_alerted', remaining <= threshold and '1' or '0')
if remaining > threshold then redis.call('HSET', KEYS[1], 'sold_out_alerted', '0') end
if remaining > 0 then redis.call('HDEL', KEYS[1], 'sold_out_at') end
return {'OK', before, remaining, reserved, sold, in_flight, excess}
