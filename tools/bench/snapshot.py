#!/usr/bin/python3
"""Snapshot benchmark: kvcache with ENTRIES keys of VALUE_LEN bytes, baselines in the same run.

  1. write: POST /snapshot on an idle server (paced: a background snapshot works an eighth of
     the time) and the final snapshot at shutdown (full speed) -> MB/s, each against
     `dd bs=1M conv=fsync` of the same size into the same directory right after it;
  2. service during a snapshot: wrk mixed.lua (tools/bench/run.sh's mixed load: 5000 keys,
     128-byte values, 30% puts, -c50) for DURATION with snapshots written back to back the
     whole time, against the same wrk without any (ROUNDS each, the order alternating): req/s and p99;
  3. restore: the restart's "loaded ... in S s" line -> entries/s, against `cat FILE
     >/dev/null` of the same file (page cache warm for both; alternating, ROUNDS each).

  /usr/bin/python3 tools/bench/snapshot.py            # ENTRIES=2000000 ROUNDS=3 DURATION=10s
  ENTRIES=200000 ROUNDS=1 DURATION=3s /usr/bin/python3 tools/bench/snapshot.py   # smoke run

Env: ENTRIES, VALUE_LEN (128), ROUNDS (3), DURATION (10s), KV_PORT (17271), KV_THREADS (2),
KVCACHE (binary, default build/kvcache), OUT_DIR (default tools/bench/results/snapshot-<time>:
the snapshot file, logs and raw wrk outputs go there; it must be on the disk you care about).
Loopback only; every wait is bounded; only the processes started here are stopped.
"""
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import report  # noqa: E402  (wrk output parser shared with run.sh)

ENTRIES = int(os.environ.get("ENTRIES", "2000000"))
VALUE_LEN = int(os.environ.get("VALUE_LEN", "128"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = os.environ.get("DURATION", "10s")
PORT = int(os.environ.get("KV_PORT", "17271"))
THREADS = os.environ.get("KV_THREADS", "2")
BINARY = os.environ.get("KVCACHE", str(REPO / "build" / "kvcache"))
OUT = Path(os.environ.get("OUT_DIR", HERE / "results" / time.strftime("snapshot-%Y%m%d-%H%M%S")))
SNAP = OUT / "cache.snap"
PY = "/usr/bin/python3"

server = None


def url(path):
    return f"http://127.0.0.1:{PORT}{path}"


def http(method, path, timeout=600):
    req = urllib.request.Request(url(path), method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def start(tag):
    global server
    log = open(OUT / f"kvcache-{tag}.log", "wb")
    server = subprocess.Popen([BINARY, "--bind", "127.0.0.1", "--port", str(PORT), "--threads", THREADS,
                               "--memory-limit", "4G", "--snapshot-path", str(SNAP), "--snapshot-interval", "0",
                               "--snapshot-timeout", "600"], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 600  # loading 2M entries is part of the start
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"kvcache exited at start: see {log.name}")
        try:
            if http("GET", "/health", timeout=1)[0] == 200:
                return Path(log.name)
        except OSError:
            time.sleep(0.05)
    sys.exit("kvcache did not come up")


def stop():
    global server
    if server and server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=660)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    server = None


def timed(cmd):
    t = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, shell=True)
    return time.monotonic() - t


def wrk(tag):
    raw = OUT / f"wrk-{tag}.txt"
    env = dict(os.environ, KEYS="5000", VALUE_LEN="128", PUT_RATIO="0.3")
    with open(raw, "wb") as f:
        subprocess.run(["timeout", "-k", "5", "600", "wrk", "-t2", "-c50", f"-d{DURATION}", "--timeout", "2s",
                        "--latency", "-s", str(HERE / "mixed.lua"), url("")], stdout=f, stderr=subprocess.STDOUT,
                       env=env)
    row = report.parse(str(raw))
    return row["rps"], row["p99_us"]


def snapshots_during(stop_flag, results):
    while not stop_flag.is_set():
        status, body = http("POST", "/snapshot")
        if status == 200:
            results.append(body)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    lines = []

    def note(text):
        print(text, flush=True)
        lines.append(text)

    note(f"snapshot benchmark: {ENTRIES} entries x {VALUE_LEN} B, {ROUNDS} rounds, wrk {DURATION}; "
         f"binary {BINARY}; directory {OUT} ({shutil.disk_usage(OUT).free >> 30} GiB free); "
         f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    fill_log = start("fill")
    t = time.monotonic()
    subprocess.run([PY, str(HERE / "preload.py"), "--port", str(PORT), "--keys", str(ENTRIES), "--timeout", "900",
                    "--verify", "0"], check=True, stdout=subprocess.DEVNULL)
    note(f"preloaded in {time.monotonic() - t:.1f}s")

    # 1. write speed vs dd
    for r in range(ROUNDS):
        status, body = http("POST", "/snapshot")
        m = re.search(r'"entries":(\d+),"bytes":(\d+),"seconds":([\d.]+)', body)
        if status != 200 or not m:
            sys.exit(f"POST /snapshot: {status} {body}")
        entries, size, secs = int(m.group(1)), int(m.group(2)), float(m.group(3))
        dd = timed(f"dd if=/dev/zero of={OUT}/dd.bin bs=1M count={max(1, size >> 20)} conv=fsync")
        os.unlink(OUT / "dd.bin")
        note(f"POST /snapshot round {r + 1} (paced): {entries} entries {size / 1e6:.0f} MB in {secs:.2f}s "
             f"= {size / 1e6 / secs:.0f} MB/s; dd {size / 1e6 / dd:.0f} MB/s; snapshot/dd speed {dd / secs:.2f}")

    # 2. service during snapshots vs without
    def during_snapshots(r):
        done, results = threading.Event(), []
        writer = threading.Thread(target=snapshots_during, args=(done, results))
        writer.start()
        rps, p99 = wrk(f"snapshot-r{r + 1}")
        done.set()
        writer.join()
        return rps, p99, results

    # The order alternates: a first run warms caches and a box's load drifts.
    for r in range(ROUNDS):
        if r % 2 == 0:
            rps0, p99_0 = wrk(f"plain-r{r + 1}")
            rps1, p99_1, results = during_snapshots(r)
        else:
            rps1, p99_1, results = during_snapshots(r)
            rps0, p99_0 = wrk(f"plain-r{r + 1}")
        note(f"load round {r + 1}: without snapshot {rps0:.0f} req/s p99 {p99_0:.0f} us; during "
             f"{len(results)} back-to-back snapshots {rps1:.0f} req/s p99 {p99_1:.0f} us; throughput "
             f"{rps1 / rps0:.2f}x, p99 {p99_1 / p99_0:.2f}x")

    # 3. restore vs cat
    stop()  # writes the final snapshot, at full speed
    m = re.findall(r"snapshot written to \S+: (\d+) entries, (\d+) bytes in ([\d.]+)s", fill_log.read_text())[-1]
    size, secs = int(m[1]), float(m[2])
    dd = timed(f"dd if=/dev/zero of={OUT}/dd.bin bs=1M count={max(1, size >> 20)} conv=fsync")
    os.unlink(OUT / "dd.bin")
    note(f"final snapshot (full speed): {m[0]} entries {size / 1e6:.0f} MB in {secs:.2f}s = "
         f"{size / 1e6 / secs:.0f} MB/s; dd {size / 1e6 / dd:.0f} MB/s; snapshot/dd speed {dd / secs:.2f}")
    for r in range(ROUNDS):
        timed(f"cat {SNAP} >/dev/null")  # warm the page cache for both
        cat = timed(f"cat {SNAP} >/dev/null")
        log = start(f"restore-r{r + 1}")
        # The process's CPU time right after start is (nearly all) the load's: less noisy than
        # wall time on a shared box.
        fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        m = re.search(r"loaded: (\d+) entries.*?(\d+) bytes in ([\d.]+)s", log.read_text())
        stop()
        entries, size, secs = int(m.group(1)), int(m.group(2)), float(m.group(3))
        note(f"restore round {r + 1}: {entries} entries {size / 1e6:.0f} MB in {secs:.2f}s = "
             f"{entries / secs / 1e6:.2f}M entries/s (process CPU {cpu:.2f}s on {THREADS} threads); "
             f"cat {cat:.3f}s ({size / 1e6 / cat:.0f} MB/s); restore/cat time {secs / cat:.1f}x")
    (OUT / "summary.txt").write_text("\n".join(lines) + "\n")
    os.unlink(SNAP)


if __name__ == "__main__":
    try:
        main()
    finally:
        stop()
