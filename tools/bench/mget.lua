-- wrk script: POST /mget of KEYS keys ("<KEY_PREFIX>1".."<KEY_PREFIX>KEYS"), the same body every
-- time; ACCEPT_ENCODING, when set and not empty, is sent as Accept-Encoding (e.g. "gzip").
-- done() prints "MGET requests=N bytes=B non2xx=E socket_errors=S" (bytes: all response bytes read).
local n = tonumber(os.getenv("KEYS") or "1000")
local prefix = os.getenv("KEY_PREFIX") or "gz:"
local keys = {}
for i = 1, n do keys[i] = '"' .. prefix .. i .. '"' end
local body = '{"keys":[' .. table.concat(keys, ",") .. ']}'
local headers = { ["Content-Type"] = "application/json" }
local accept = os.getenv("ACCEPT_ENCODING")
if accept ~= nil and accept ~= "" then headers["Accept-Encoding"] = accept end

request = function()
  return wrk.format("POST", "/mget", headers, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("MGET requests=%d bytes=%d non2xx=%d socket_errors=%d p99_us=%d\n", summary.requests,
    summary.bytes, e.status, e.connect + e.read + e.write + e.timeout, latency:percentile(99)))
end
