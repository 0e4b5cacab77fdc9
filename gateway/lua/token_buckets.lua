-- The rate limits of a batch of requests, decided in one call (one Redis round trip per event-loop
-- iteration of a gateway process, however many requests it holds).
-- Each bucket is a token bucket kept as GCRA: one string key holding its theoretical arrival time
-- (TAT, in whole microseconds of Redis server time). A bucket of `burst` tokens refilled every `interval`
-- microseconds lets a request pass when TAT + interval - now <= burst * interval; passing moves TAT on by
-- the interval. Whole microseconds (~1.8e15 now) are exact in Lua's doubles (below 2^53); fractional
-- milliseconds are not, and their rounding refused requests that should pass.
-- KEYS: the buckets of every request, request after request.
-- ARGV[1]: the number of requests; then, per request, its number of buckets n and n pairs (interval in
-- whole microseconds, burst).
-- Returns, per request, 0 when every one of its buckets had a token (one was taken from each), else the
-- milliseconds (rounded up) until the emptiest holds one again (nothing is taken: a refused request
-- drains nothing).
-- Requests are decided in order, so two of one user in the same batch see each other's take. A bucket
-- several requests of the batch share (their address, say) is read once and written once.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tats = {}   -- bucket key -> TAT as this batch has left it
local taken = {}  -- bucket key -> true once a request of the batch took from it
local order = {}  -- those keys, in the order they were first taken from (written back once each)
local out = {}
local arg = 2
local key = 0
local moved = {}
for r = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[arg])
  arg = arg + 1
  local wait = 0
  for b = 1, n do
    local k = KEYS[key + b]
    local interval = tonumber(ARGV[arg])
    local burst = tonumber(ARGV[arg + 1])
    arg = arg + 2
    local tat = tats[k]
    if tat == nil then
      tat = tonumber(redis.call('GET', k) or 0)
      tats[k] = tat
    end
    if tat < now then
      tat = now
    end
    moved[b] = tat + interval
    local over = moved[b] - now - burst * interval
    if over > wait then
      wait = over
    end
  end
  if wait > 0 then
    out[r] = math.ceil(wait / 1000)
  else
    for b = 1, n do
      local k = KEYS[key + b]
      if not taken[k] then
        taken[k] = true
        order[#order + 1] = k
      end
      tats[k] = moved[b]
    end
    out[r] = 0
  end
  key = key + n
end
for i = 1, #order do
  local k = order[i]
  -- Gone once the bucket would be full again anyway.
  redis.call('SET', k, string.format('%.0f', tats[k]), 'PX', math.ceil((tats[k] - now) / 1000) + 1000)
end
return out
