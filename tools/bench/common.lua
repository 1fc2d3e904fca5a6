-- Shared implementation of the kvcache wrk scripts (mixed.lua, get.lua, put.lua).
-- Those files set BENCH_MODE ("mixed" | "get" | "put") and dofile() this one.
--
-- Environment (read with os.getenv, in every wrk thread):
--   KEYS        key pool size, keys are "<KEY_PREFIX>1".."<KEY_PREFIX>KEYS" (default 5000)
--   VALUE_LEN   bytes per value (default 128)
--   PUT_RATIO   fraction of puts, mixed mode only (default 0.3)
--   KEY_PREFIX  default "key:"
--   KEY_MODE    "random" (default): uniform random key from the pool per request;
--               "unique" (put mode): every put uses a new, never-seen key
--               (<KEY_PREFIX>u<salt>.<thread>.<seq>), so under --memory-limit every put evicts.
--   DELAY_MS    unset/0 (default): each connection sends as fast as it is answered; N: it
--               waits N ms before each request, so targets of different speed get about
--               the same offered rate, connections / (N ms + latency)
--
-- Status accounting, per thread, merged in done() via thread:get():
--   2xx           expected for everything
--   404           "Key not found." on a get: expected (key not put yet) and counted as a miss;
--                 in put mode, or a 404 with any other body, it is UNEXPECTED
--   anything else UNEXPECTED (counted per status code)
-- wrk's own "Non-2xx or 3xx responses" line also counts the 404 misses; use the BENCH lines.

local function env_num(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  local n = tonumber(v)
  if n == nil then error(name .. " must be a number, got '" .. v .. "'") end
  return n
end

local mode = BENCH_MODE or "mixed"
local KEYS = math.floor(env_num("KEYS", 5000))
local VALUE_LEN = math.floor(env_num("VALUE_LEN", 128))
local PUT_RATIO = env_num("PUT_RATIO", 0.3)
if mode == "get" then PUT_RATIO = 0 elseif mode == "put" then PUT_RATIO = 1 end
local DELAY_MS = env_num("DELAY_MS", 0)
if DELAY_MS > 0 then
  function delay() return DELAY_MS end  -- wrk's hook: ms to wait before the next request
end
local KEY_PREFIX = os.getenv("KEY_PREFIX") or "key:"
local KEY_MODE = os.getenv("KEY_MODE") or "random"
if KEYS < 1 then error("KEYS must be >= 1") end
if KEY_MODE ~= "random" and KEY_MODE ~= "unique" then error("KEY_MODE must be random or unique") end

local VALUE = string.rep("x", VALUE_LEN)
local PUT_PREFIX = '{"key":"'
local PUT_SUFFIX = '","value":"' .. VALUE .. '"}'
local put_headers = { ["Content-Type"] = "application/json" }
local get_headers = {}

-- ---- main state (setup/done) ------------------------------------------------
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

-- ---- per-thread state (init/request/response) -------------------------------
-- Counters are globals so that thread:get() can read them from done().
sent_get, sent_put = 0, 0
st_2xx, st_404, unexpected = 0, 0, 0
unexpected_by_status = {}
local seq = 0
local salt = ""

function init(args)
  local id = thread_id or 0
  -- distinct random streams per thread (and per run)
  math.randomseed(os.time() * 1000 + id * 7919 + math.floor((os.clock() * 1e6) % 1000))
  for _ = 1, 10 do math.random() end
  salt = string.format("u%d%04d.%d.", os.time() % 100000000, math.random(0, 9999), id)
end

local function next_key()
  if KEY_MODE == "unique" then
    seq = seq + 1
    return KEY_PREFIX .. salt .. seq
  end
  return KEY_PREFIX .. math.random(1, KEYS)
end

function request()
  local key = next_key()
  if PUT_RATIO > 0 and (PUT_RATIO >= 1 or math.random() < PUT_RATIO) then
    sent_put = sent_put + 1
    return wrk.format("POST", "/put", put_headers, PUT_PREFIX .. key .. PUT_SUFFIX)
  end
  sent_get = sent_get + 1
  return wrk.format("GET", "/get?key=" .. key, get_headers)
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    st_2xx = st_2xx + 1
  elseif status == 404 and mode ~= "put" and body and string.find(body, "Key not found", 1, true) then
    st_404 = st_404 + 1
  else
    unexpected = unexpected + 1
    unexpected_by_status[status] = (unexpected_by_status[status] or 0) + 1
  end
end

-- ---- main state: merge per-thread counters --------------------------------
function done(summary, latency, requests)
  local t = { sent_get = 0, sent_put = 0, st_2xx = 0, st_404 = 0, unexpected = 0 }
  local by = {}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + (thread:get(k) or 0) end
    local ubs = thread:get("unexpected_by_status") or {}
    for code, n in pairs(ubs) do by[code] = (by[code] or 0) + n end
  end
  local codes = {}
  for code, n in pairs(by) do table.insert(codes, tostring(code) .. ":" .. n) end
  table.sort(codes)
  local e = summary.errors
  io.write(string.format(
    "BENCH mode=%s keys=%d value_len=%d put_ratio=%g key_mode=%s sent_get=%d sent_put=%d " ..
    "status_2xx=%d status_404=%d unexpected=%d unexpected_by_status=%s " ..
    "socket_errors=%d connect=%d read=%d write=%d timeout=%d\n",
    mode, KEYS, VALUE_LEN, PUT_RATIO, KEY_MODE, t.sent_get, t.sent_put,
    t.st_2xx, t.st_404, t.unexpected, (#codes > 0 and table.concat(codes, ",") or "-"),
    e.connect + e.read + e.write + e.timeout, e.connect, e.read, e.write, e.timeout))
end
