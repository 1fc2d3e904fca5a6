#!/usr/bin/python3
"""Sends a fixed stream of 9,000 pipelined requests (per key i < 3,000: a put of a
128-byte value, a get hit, a get miss) over one keep-alive connection and waits
for every answer. For instruction counts that do not depend on the machine's load:

  valgrind --tool=callgrind --callgrind-out-file=cg.out build/kvcache --port 17400 --threads 1 &
  /usr/bin/python3 tools/bench/pipeline_requests.py 17400; kill %1; wait
  callgrind_annotate --inclusive=yes cg.out | grep Worker::process   # / 9,000 = per request
"""
import socket, sys, time
port = int(sys.argv[1])
v = "x" * 128
reqs = []
for i in range(3000):
    body = '{"key":"key:%d","value":"%s"}' % (i, v)
    reqs.append(("POST /put HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)).encode())
    reqs.append(("GET /get?key=key:%d HTTP/1.1\r\nHost: x\r\nUser-Agent: wrk\r\n\r\n" % i).encode())
    reqs.append(("GET /get?key=miss:%d HTTP/1.1\r\nHost: x\r\n\r\n" % i).encode())
for _ in range(200):  # valgrind starts slowly: up to 20 s
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        break
    except OSError:
        time.sleep(0.1)
else:
    raise SystemExit("server not listening")
got = 0
for start in range(0, len(reqs), 50):
    batch = reqs[start:start+50]
    s.sendall(b"".join(batch))
    want = len(batch)
    buf = b""
    while buf.count(b"HTTP/1.1 ") < want or not buf.endswith(b"}"):
        chunk = s.recv(1 << 20)
        if not chunk:
            raise SystemExit("closed")
        buf += chunk
    got += want
print("requests", got)
