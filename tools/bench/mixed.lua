-- kvcache wrk script: random gets and puts (PUT_RATIO, default 0.3) over KEYS keys.
-- Env: KEYS (5000), VALUE_LEN (128), PUT_RATIO (0.3, mixed only), KEY_PREFIX ("key:"),
--      KEY_MODE (random|unique). See common.lua for the status accounting.
-- usage: wrk -t2 -c50 -d10s --latency -s tools/bench/mixed.lua http://127.0.0.1:7171
BENCH_MODE = "mixed"
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "common.lua")
