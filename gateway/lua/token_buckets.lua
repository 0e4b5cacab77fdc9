-- The rate limits of a batch of requests, decided in one call (one Redis round trip per event-loop
-- iteration of a gateway process, however many requests it holds).
-- Each bucket is a token bucket kept as GCRA: one string key holding its theoretical arrival time
-- (TAT, in whole microseconds of Redis server time). A bucket of `burst` tokens refilled at `rate` per
-- second lets a request pass when TAT + I - now <= burst * I, with I = 1e6/rate rounded to whole
-- microseconds; passing moves TAT on by I. Whole microseconds (~1.8e15 now) are exact in Lua's doubles
-- (below 2^53); fractional milliseconds are not, and their rounding refused requests that should pass.
-- KEYS: the buckets of every request, request after request.
-- ARGV[1]: the number of requests; then, per request, its number of buckets n and n pairs (rate, burst).
-- Returns, per request, 0 when every one of its buckets had a token (one was taken from each), else the
-- milliseconds (rounded up) until the emptiest holds one again (nothing is taken: a refused request
-- drains nothing).
-- Requests are decided in order, so two of one user in the same batch see each other's take.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local out = {}
local arg = 2
local key = 0
for r = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[arg])
  arg = arg + 1
  local wait = 0
  local tats = {}
  for b = 1, n do
    local interval = math.floor(1000000 / tonumber(ARGV[arg]) + 0.5)
    local burst = tonumber(ARGV[arg + 1])
    arg = arg + 2
    local tat = tonumber(redis.call('GET', KEYS[key + b]) or 0)
    if tat < now then
      tat = now
    end
    tats[b] = tat + interval
    local over = tats[b] - now - burst * interval
    if over > wait then
      wait = over
    end
  end
  if wait > 0 then
    out[r] = math.ceil(wait / 1000)
  else
    for b = 1, n do
      -- Gone once the bucket would be full again anyway.
      redis.call('SET', KEYS[key + b], string.format('%.0f', tats[b]), 'PX', math.ceil((tats[b] - now) / 1000) + 1000)
    end
    out[r] = 0
  end
  key = key + n
end
return out
