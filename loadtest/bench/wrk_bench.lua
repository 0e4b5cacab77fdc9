-- wrk script of every benchmark in loadtest/bench (run_wrk in wrk.py); the same client-side work for each endpoint.
--
--   wrk -t THREADS ... -s loadtest/bench/wrk_bench.lua URL -- trivial THREADS
--   wrk -t THREADS ... -s loadtest/bench/wrk_bench.lua URL -- purchase THREADS SALE_ID TOKENS_FILE RUN_TAG [PREFIX]
--
-- purchase: POST /sales/SALE_ID/purchase, body {"quantity":1}, a unique Idempotency-Key per request
-- (RUN_TAG-thread-counter) and a bearer token rotating over the tokens in TOKENS_FILE (one per line).
-- PREFIX (optional) goes before the purchase path, e.g. /api/flashsale through the gateway (loadtest/bench/gateway.py).
-- trivial:  GET /healthz/live.
-- done() prints one line `BENCH_RESULT {json}`: requests, duration, latency percentiles (microseconds),
-- status counts, socket errors, and how many requests were still in flight when wrk stopped.

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_no", thread_count)
  table.insert(threads, thread)
end

local mode, threads_total, request_text, prefix, body, tokens, token_count, tag
-- Globals, not locals: done() reads them from each thread with thread:get().
sent, received, n202, n2xx, other = 0, 0, 0, 0, 0
statuses = {}

function init(args)
  mode = args[1] or "trivial"
  threads_total = tonumber(args[2] or "1")
  local host = wrk.headers["Host"] or wrk.host
  if mode == "trivial" then
    request_text = "GET /healthz/live HTTP/1.1\r\nHost: " .. host .. "\r\n\r\n"
    return
  end
  local sale_id, tokens_file = args[3], args[4]
  tag = args[5] or "run"
  local path_prefix = args[6] or ""
  tokens = {}
  for line in io.lines(tokens_file) do
    if #line > 0 then table.insert(tokens, line) end
  end
  token_count = #tokens
  if token_count == 0 then error("no tokens in " .. tokens_file) end
  body = '{"quantity":1}'
  prefix = "POST " .. path_prefix .. "/sales/" .. sale_id .. "/purchase HTTP/1.1\r\nHost: " .. host
    .. "\r\nContent-Type: application/json\r\nContent-Length: " .. #body .. "\r\nAuthorization: Bearer "
end

function request()
  sent = sent + 1
  if mode == "trivial" then return request_text end
  -- Threads interleave over the tokens, so each user is hit at (total rate / users) per second.
  local i = ((sent - 1) * threads_total + (thread_no - 1)) % token_count + 1
  return prefix .. tokens[i] .. "\r\nIdempotency-Key: " .. tag .. "-" .. thread_no .. "-" .. sent
    .. "\r\n\r\n" .. body
end

function response(status, _headers, _body)
  received = received + 1
  if status == 202 then
    n202 = n202 + 1
  elseif status >= 200 and status < 300 then
    n2xx = n2xx + 1
  else
    other = other + 1
  end
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

local function json_statuses(all)
  local parts = {}
  for code, n in pairs(all) do
    table.insert(parts, '"' .. code .. '":' .. n)
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local t_sent, t_received, t_202, t_2xx, t_other = 0, 0, 0, 0, 0
  local all = {}
  for _, thread in ipairs(threads) do
    t_sent = t_sent + thread:get("sent")
    t_received = t_received + thread:get("received")
    t_202 = t_202 + thread:get("n202")
    t_2xx = t_2xx + thread:get("n2xx")
    t_other = t_other + thread:get("other")
    for code, n in pairs(thread:get("statuses")) do
      all[code] = (all[code] or 0) + n
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f},'
      .. '"sent":%d,"received":%d,"status_202":%d,"status_other_2xx":%d,"status_non_2xx":%d,"statuses":%s,'
      .. '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean,
    t_sent, t_received, t_202, t_2xx, t_other, json_statuses(all),
    e.connect, e.read, e.write, e.timeout, e.status))
end
