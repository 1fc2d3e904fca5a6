-- kvcache wrk script: GET /health with "Connection: close", so every request
-- opens a new connection (over https: a full TLS handshake; wrk resumes no session).
-- usage: wrk -t2 -c50 -d10s -s tools/bench/close.lua https://127.0.0.1:7171
wrk.method = "GET"
wrk.path = "/health"
wrk.headers["Connection"] = "close"
