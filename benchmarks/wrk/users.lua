-- wrk script for benchmarks/serving.py: each request asks for the next user's recommendations.
--
--   MOEREC_BENCH_TOKEN=... wrk -t1 -c16 -d10s -s benchmarks/wrk/users.lua http://127.0.0.1:8000 \
--       -- PATHS_FILE [OFFSET [THREADS]]
--
-- PATHS_FILE holds one request path per line (/v1/users/ID/recommendations?k=10). Thread i
-- of THREADS (wrk's -t, default 1) sends lines OFFSET+i, OFFSET+i+THREADS, ... (wrapping
-- around), so as long as a run sends fewer requests than there are lines no path repeats.
-- The bearer token comes from the environment, not the command line. done() prints one line
-- "WRK_JSON {...}": request count, duration, latency percentiles in microseconds and every
-- error counter (status = responses with a 4xx/5xx code).

local token = os.getenv("MOEREC_BENCH_TOKEN")
if token == nil or token == "" then
  error("set MOEREC_BENCH_TOKEN to a bearer token")
end
wrk.headers["Authorization"] = "Bearer " .. token
wrk.headers["Accept"] = "application/json"

local started = 0
local paths = {}
local position = 0
local stride = 1

function setup(thread)
  thread:set("thread_index", started)
  started = started + 1
end

function init(args)
  local file = args[1]
  if file == nil then
    error("usage: wrk ... -s users.lua URL -- PATHS_FILE [OFFSET [THREADS]]")
  end
  for line in io.lines(file) do
    if line ~= "" then
      paths[#paths + 1] = line
    end
  end
  if #paths == 0 then
    error(file .. " holds no request path")
  end
  stride = tonumber(args[3] or "1") or 1
  position = (tonumber(args[2] or "0") or 0) + (thread_index or 0)
end

function request()
  local path = paths[position % #paths + 1]
  position = position + stride
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"latency_us":{"p50":%d,"p90":%d,"p95":%d,"p99":%d,"mean":%.1f,"max":%d,"min":%d},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency.mean, latency.max, latency.min,
    e.connect, e.read, e.write, e.status, e.timeout))
end
