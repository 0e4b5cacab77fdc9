-- Count again claims that Redis lost (a restart that lost its last second) but the wallet record holds:
-- the total and the per-user counts go up by them, and their claim entries go back into the stream, so a
-- second check finds them there and counts nothing twice.
-- KEYS: 1 template hash, 2 per-user claims hash, 3 claim stream (all share {cp:<id>})
-- ARGV: 1 template id, then (coupon id, user id, claimed at ms) triples
if redis.call('HEXISTS', KEYS[1], 'total') == 0 then return 0 end
local counted = 0
for i = 2, #ARGV, 3 do
  redis.call('HINCRBY', KEYS[1], 'claimed', 1)
  redis.call('HINCRBY', KEYS[2], ARGV[i + 1], 1)
  redis.call('XADD', KEYS[3], '*', 'type', 'coupon.claimed', 'v', '1', 'data', cjson.encode({
    coupon_id = ARGV[i], template_id = tonumber(ARGV[1]), user_id = ARGV[i + 1],
    claimed_at_ms = tonumber(ARGV[i + 2])}))
  counted = counted + 1
end
return counted
