-- The rate limits of a batch of requests, decided in one call (one Redis round trip per event-loop
-- iteration of a gateway process, however many requests it holds; on a Redis Cluster one call per slot,
-- each master's calls in one write).
-- Each bucket is a token bucket kept as GCRA: one string key holding its theoretical arrival time
-- (TAT, in whole microseconds of Redis server time). A bucket of `burst` tokens refilled every `interval`
-- microseconds lets a request pass when TAT + interval - now <= burst * interval; passing moves TAT on by
-- the interval. Whole microseconds (~1.8e15 now) are exact in Lua's doubles (below 2^53); fractional
-- milliseconds are not, and their rounding refused requests that should pass.
-- KEYS: the buckets of every request, request after request.
-- ARGV[1]: the number of requests; then, per request, its number of buckets n and n pairs (interval in
-- whole microseconds, burst). A negative n is a give-back: the request was refused by a call on another
-- slot (Redis Cluster), so the -n buckets get back the token this script took from them (never above full).
-- Returns, per request, 0 when every one of its buckets had a token (one was taken from each), else the
-- milliseconds (rounded up) until the emptiest holds one again (nothing is taken: a refused request
-- drains nothing); 0 for a give-back.
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
-- Gives one token back to each of the n buckets from KEYS[key + 1]: a request another call refused.
local function give_back(n)
  for b = 1, n do
    local k = KEYS[key + b]
    local tat = tats[k]
    if tat == nil then
      tat = tonumber(redis.call('GET', k) or 0)
    end
    tat = tat - tonumber(ARGV[arg])
    arg = arg + 2
    if tat < now then
      tat = now
    end
    tats[k] = tat
    if not taken[k] then
      taken[k] = true
      order[#order + 1] = k
    end
  end
end
-- Takes one token from each of the n buckets from KEYS[key + 1] when every one has it: 0. Else nothing
-- is taken and the answer is the milliseconds until the emptiest holds one again.
local function take(n)
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
    return math.ceil(wait / 1000)
  end
  for b = 1, n do
    local k = KEYS[key + b]
    if not taken[k] then
      taken[k] = true
      order[#order + 1] = k
    end
    tats[k] = moved[b]
  end
  return 0
end
for r = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[arg])
  arg = arg + 1
  if n < 0 then
    n = -n
    give_back(n)
    out[r] = 0
  else
    out[r] = take(n)
  end
  key = key + n
end
for i = 1, #order do
  local k = order[i]
  -- Gone once the bucket would be full again anyway.
  redis.call('SET', k, string.format('%.0f', tats[k]), 'PX', math.ceil((tats[k] - now) / 1000) + 1000)
end
return out
