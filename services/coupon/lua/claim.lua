-- Claim one coupon of a template: total and per-user limits decided atomically.
-- KEYS: 1 template hash, 2 per-user claims hash, 3 idempotency key, 4 claim stream (all share {cp:<id>})
-- ARGV: 1 user id, 2 new coupon id, 3 idempotency ttl (s), 4 template id, 5 '1' when ops issue compensation
local t = redis.call('HMGET', KEYS[1], 'state', 'total', 'claimed', 'limit', 'starts', 'ends', 'incarnation', 'kind')
if not t[1] or not t[2] then return {'NOT_FOUND'} end
if t[8] == 'compensation' and ARGV[5] ~= '1' then return {'NOT_CLAIMABLE'} end
-- A replay answers the first claim, whatever happened since; a record left by another template that
-- had this id (incarnation differs) is not a replay.
local seen = redis.call('GET', KEYS[3])
if seen then
  local cid, inc = string.match(seen, '^([^|]*)|(.*)$')
  if inc == (t[7] or '') then return {'REPLAY', cid} end
end
if t[1] ~= 'active' then return {'PAUSED'} end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if t[5] and t[5] ~= '' and now < tonumber(t[5]) then return {'NOT_STARTED'} end
if t[6] and t[6] ~= '' and now >= tonumber(t[6]) then return {'ENDED'} end
if tonumber(t[3]) >= tonumber(t[2]) then return {'EXHAUSTED'} end
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if held >= tonumber(t[4]) then return {'LIMIT', held, tonumber(t[4])} end
local claimed = redis.call('HINCRBY', KEYS[1], 'claimed', 1)
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('SET', KEYS[3], ARGV[2] .. '|' .. (t[7] or ''), 'EX', ARGV[3])
redis.call('XADD', KEYS[4], '*', 'type', 'coupon.claimed', 'v', '1', 'data', cjson.encode({
  coupon_id = ARGV[2], template_id = tonumber(ARGV[4]), user_id = ARGV[1], claimed_at_ms = now}))
return {'OK', ARGV[2], tonumber(t[2]) - claimed}
