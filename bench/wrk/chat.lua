-- wrk script for the relay benchmark: POST a JSON chat request with a bearer key.
--
-- Environment:
--   BENCH_BODY  file holding the JSON request body (required)
--   BENCH_KEYS  file with one API key per line; requests cycle through them (optional;
--               without it no Authorization header is sent, e.g. for the bare proxy)
--   BENCH_PATH  request path (default /v1/chat/completions)
-- At the end one line "BENCH_JSON {...}" gives the counts and latency percentiles (in
-- microseconds) for bench/runner.py to read; wrk's own --latency report is printed too.

local function read_file(path)
  local handle = assert(io.open(path, "rb"))
  local text = handle:read("*a")
  handle:close()
  return text
end

local body = read_file(assert(os.getenv("BENCH_BODY"), "BENCH_BODY is not set"))
local path = os.getenv("BENCH_PATH") or "/v1/chat/completions"
local keys_file = os.getenv("BENCH_KEYS")

-- Requests are formatted once per thread, up front: the load generator must cost as little
-- as possible. This happens in init(), once wrk has set the Host header (at load time it
-- is not set yet, and a request without Host is refused by strict HTTP/1.1 servers).
local prepared = {}
local function prepare(key)
  local headers = { ["Content-Type"] = "application/json", ["Host"] = wrk.headers["Host"] }
  if key then
    headers["Authorization"] = "Bearer " .. key
  end
  prepared[#prepared + 1] = wrk.format("POST", path, headers, body)
end

local counter = 0
local thread_offset = 0

function init(args)
  if keys_file and keys_file ~= "" then
    for line in io.lines(keys_file) do
      local key = line:match("^%s*(.-)%s*$")
      if key ~= "" then
        prepare(key)
      end
    end
  end
  if #prepared == 0 then
    prepare(nil)
  end
  -- Threads start at different keys so that they do not walk the list in step.
  thread_offset = math.random(0, #prepared - 1)
end

function request()
  counter = counter + 1
  return prepared[((counter + thread_offset) % #prepared) + 1]
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,' ..
    '"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
