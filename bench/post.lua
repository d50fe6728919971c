-- bench/post.lua - the harness's wrk script (../shared/bench/lua/post.lua) plus p99.9 and p99.99.
-- bench/run.sh puts it in place of lua/post.lua in its staged copy of the harness; bench.sh parses the RESULT
-- line as key=value pairs, so the extra keys are ignored there and read by bench/summary.py from the raw files.
--   AUTH_TOKEN  bearer token sent to every target (default: a dummy JWT)
--   BODY_FILE   file whose bytes are the request body (default: the small img2video request)
--   DELAY_MS    mean think time in ms between a response and the next request on each connection (wrk's
--               delay()), drawn from an exponential distribution so that connections do not march in lockstep
--               (arrivals close to Poisson): C connections offer about C / (DELAY_MS + latency) requests per
--               second. wrk's latency excludes the think time. Unset: back-to-back requests (full load).
-- No request()/response() function: the request is formatted once per thread, and responses are not handed
-- to Lua, so the load generator costs the same as with the harness's own script.

local token = os.getenv("AUTH_TOKEN")
if token == nil or token == "" then
  token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl"
end

local body
local body_file = os.getenv("BODY_FILE")
if body_file ~= nil and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  body = f:read("*a")
  f:close()
else
  body = '{"model":"viduq2","images":["https://example.com/first-frame.png"],'
      .. '"prompt":"a cat surfing a wave at sunset","duration":5,"resolution":"720p"}'
end

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. token

local delay_ms = tonumber(os.getenv("DELAY_MS") or "")
if delay_ms ~= nil and delay_ms > 0 then
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16))
  function delay()
    -- exponential, capped at 10 x the mean; wrk takes whole milliseconds
    local d = -delay_ms * math.log(1 - math.random())
    return math.floor(math.min(d, 10 * delay_ms) + 0.5)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d rps=%.2f p50_us=%d p90_us=%d p99_us=%d " ..
    "mean_us=%.1f max_us=%d err_connect=%d err_read=%d err_write=%d " ..
    "err_status=%d err_timeout=%d bytes=%d body_bytes=%d p999_us=%d p9999_us=%d\n",
    summary.requests, summary.duration,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout, summary.bytes, #body,
    latency:percentile(99.9), latency:percentile(99.99)))
end
