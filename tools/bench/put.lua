-- kvcache wrk script: puts only (POST /put); KEY_MODE=unique for never-repeating keys (eviction test).
-- Env: KEYS (5000), VALUE_LEN (128), PUT_RATIO (0.3, mixed only), KEY_PREFIX ("key:"),
--      KEY_MODE (random|unique). See common.lua for the status accounting.
-- usage: wrk -t2 -c50 -d10s --latency -s tools/bench/put.lua http://127.0.0.1:7171
BENCH_MODE = "put"
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "common.lua")
