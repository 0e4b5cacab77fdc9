-- Token buckets, all checked and taken in one call (one Redis round trip per request).
-- KEYS[i]: a bucket (hash: m = milli-tokens left, t = last refill in ms, Redis server time).
-- ARGV[2i-1]: refill rate in tokens per second (the same number is milli-tokens per millisecond);
-- ARGV[2i]: burst (bucket size) in tokens.
-- Returns 0 when every bucket had a token (one was taken from each), else the milliseconds until
-- the emptiest bucket holds one again (nothing is taken: a refused request does not drain the others).
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local left = {}
local wait = 0
for i = 1, #KEYS do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i]) * 1000
  local state = redis.call('HMGET', KEYS[i], 'm', 't')
  local milli = tonumber(state[1])
  local last = tonumber(state[2])
  if milli == nil or last == nil then
    milli = burst
  else
    milli = math.min(burst, milli + math.max(0, now - last) * rate)
  end
  if milli < 1000 then
    local need = math.ceil((1000 - milli) / rate)
    if need > wait then wait = need end
  end
  left[i] = milli
end
if wait > 0 then
  return wait
end
for i = 1, #KEYS do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  redis.call('HSET', KEYS[i], 'm', math.floor(left[i] - 1000), 't', now)
  -- Gone once it would be full again anyway.
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst * 1000 / rate) + 1000)
end
return 0
