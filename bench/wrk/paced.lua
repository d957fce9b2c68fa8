-- wrk script: requests.lua's rotating requests, each connection pausing between requests so
-- that the connections together offer a set rate whatever the answers' latency (near an open
-- loop, unlike requests.lua's closed one): bench/robustness.py's overload scenario.
--
--   wrk -s bench/wrk/paced.lua URL -- <payload dir> <milliseconds between a connection's requests>

local requests = {}
local next_index = 0

local pause_ms = 0

function init(args)
  local dir = args[1]
  pause_ms = tonumber(args[2]) or 0
  for line in io.lines(dir .. "/index.tsv") do
    local fields = {}
    for field in string.gmatch(line, "[^\t]+") do
      table.insert(fields, field)
    end
    local file = assert(io.open(dir .. "/" .. fields[1], "rb"))
    local body = file:read("*a")
    file:close()
    local headers = {}
    for i = 2, #fields do
      local name, value = string.match(fields[i], "^([^:]+):%s*(.*)$")
      headers[name] = value
    end
    table.insert(requests, wrk.format("POST", wrk.path, headers, body))
  end
  next_index = (tonumber(wrk.thread:get("id")) or 0) * 7919 % #requests
end

function setup(thread)
  thread_count = (thread_count or 0) + 1
  thread:set("id", thread_count)
end

function delay()
  -- wrk waits this long before a connection's next request; jitter keeps them from marching in step
  return math.floor(pause_ms * (0.5 + math.random()))
end

function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end

function done(summary, latency, requests_stats)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
