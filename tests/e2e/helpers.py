"""Helpers for the kvcache end-to-end tests: starts real server processes and speaks
HTTP to them, through `requests` and through raw sockets.

Every wait in here is bounded by a deadline and an iteration count, so a
misbehaving server makes a test fail, never hang.
"""

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
import urllib3

REPO = Path(__file__).resolve().parents[2]
KVCACHE_BIN = os.environ.get("KVCACHE_BIN", str(REPO / "build" / "kvcache"))



def sanitizer_of(binary):
    """The sanitizer a binary was built with ("asan", "tsan") or None: clang
    links the sanitizer runtime in statically, so its init symbol is in the file."""
    try:
        data = Path(binary).read_bytes()
    except OSError:
        return None
    for name in ("asan", "tsan", "msan"):
        if f"__{name}_init".encode() in data:
            return name
    return None


SANITIZER = sanitizer_of(KVCACHE_BIN)
# How much wider "the server did not stall" bounds are under a sanitizer build.
SANITIZER_SLOWDOWN = 4 if SANITIZER else 1
# Liveness bounds, not speed: a start-up that loads a snapshot or a drain can
# take seconds under TSan on a busy 2-core box.
STARTUP_TIMEOUT = 10.0 * SANITIZER_SLOWDOWN  # seconds to wait for /health to answer 200
STOP_TIMEOUT = 10.0 * SANITIZER_SLOWDOWN  # seconds to wait for exit after SIGTERM
# RSS bounds are a promise of the release build: a sanitizer's shadow memory,
# quarantine and allocator metadata are not the cache's memory.
memory_bound = pytest.mark.skipif(
    SANITIZER is not None,
    reason=f"RSS bound skipped under {SANITIZER}: its shadow memory and quarantine are not the cache's",
)

# Flags every harness-started server gets unless the test overrides them.
DEFAULT_FLAGS = ["--threads", "2", "--drain-timeout", "2"]


# ---------------------------------------------------------------------------
# small helpers


def free_port():
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(prefix="k"):
    """A key no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def compact(obj):
    """JSON the way the server writes it: no spaces."""
    return json.dumps(obj, separators=(",", ":")).encode()


def error_body(message):
    return compact({"status": "ERROR", "message": message})


OK_PUT = b'{"status":"OK","message":"Key inserted/updated successfully."}'
OK_MPUT = b'{"status":"OK","message":"Items inserted/updated successfully."}'
OK_DELETE = b'{"status":"OK","message":"Key deleted."}'
NOT_FOUND = b'{"status":"ERROR","message":"Key not found."}'
OK_HEALTH = b'{"status":"OK"}'


def get_body(key, value):
    return compact({"status": "OK", "key": key, "value": value})


def require_binary():
    if not os.path.isfile(KVCACHE_BIN) or not os.access(KVCACHE_BIN, os.X_OK):
        pytest.fail(
            f"kvcache binary not found at {KVCACHE_BIN} "
            "(build it with `ninja -C build` or set KVCACHE_BIN)",
            pytrace=False,
        )


# ---------------------------------------------------------------------------
# server processes


class Server:
    """One kvcache process listening on 127.0.0.1:port."""

    def __init__(self, port, proc, stderr_path, args):
        self.port = port
        self.proc = proc
        self.stderr_path = stderr_path
        self.args = args
        self.tls = tls_files(args)
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        self.returncode = None

    def stderr(self):
        try:
            return Path(self.stderr_path).read_text(errors="replace")
        except OSError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def send_signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout=STOP_TIMEOUT):
        """Wait for exit; on timeout kill it and return None."""
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            self.returncode = None
        return self.returncode

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Signal the process and wait; returns the exit code (None: had to kill)."""
        if not self.alive():
            self.returncode = self.proc.returncode
            return self.returncode
        self.send_signal(sig)
        return self.wait(timeout)

    def describe(self):
        tail = "\n".join(self.stderr().splitlines()[-20:])
        return f"kvcache {' '.join(self.args)} (stderr tail:\n{tail})"


def tls_files(args):
    """With --tls-cert: {"cert", "key", "client_ca"?} from a kvcache command line, else None."""
    args = list(args)
    files = {}
    for flag in ("--tls-cert", "--tls-key", "--tls-client-ca"):
        if flag in args:
            files[flag[6:].replace("-", "_")] = args[args.index(flag) + 1]
    return files if "cert" in files else None


def wait_healthy(port, proc, timeout=STARTUP_TIMEOUT, tls=None):
    """Poll GET /health until 200; False on timeout or if proc exits. A TLS
    server is asked over https without checking its certificate (and, under
    mutual TLS, with its own certificate as the client's, as --health-check does)."""
    deadline = time.monotonic() + timeout
    options = {}
    if tls:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        options = {"verify": False, "cert": (tls["cert"], tls["key"]) if "client_ca" in tls else None}
    for _ in range(1000):
        if proc is not None and proc.poll() is not None:
            return False
        try:
            r = requests.get(f"{'https' if tls else 'http'}://127.0.0.1:{port}/health", timeout=0.5, **options)
            if r.status_code == 200:
                return True
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return False


def launch(tmp_dir, flags=(), env=None, port=None, pass_port=True, wait=True, wrap=()):
    """Start kvcache; returns a Server. Fails the test if it never gets healthy.
    `wrap`: a command that execs the server (fiu-run -x), keeping its PID."""
    require_binary()
    port = port or free_port()
    args = ["--bind", "127.0.0.1"]
    if pass_port:
        args += ["--port", str(port)]
    args += DEFAULT_FLAGS + list(flags)
    full_env = dict(os.environ)
    full_env.update(env or {})
    stderr_path = Path(tmp_dir) / f"kvcache-{port}-{uuid.uuid4().hex[:6]}.stderr"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [*wrap, KVCACHE_BIN] + args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=full_env,
        )
    server = Server(port, proc, stderr_path, args)
    if wait and not wait_healthy(port, proc, tls=server.tls):
        rc = server.stop(signal.SIGKILL, timeout=5)
        pytest.fail(
            f"server did not become healthy within {STARTUP_TIMEOUT}s "
            f"(exit code {rc}): {server.describe()}",
            pytrace=False,
        )
    return server


def run_binary(args, env=None, timeout=10.0):
    """Run kvcache to completion (for --help, bad flags, --health-check)."""
    require_binary()
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        return subprocess.run(
            [KVCACHE_BIN] + list(args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=full_env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"kvcache {' '.join(args)} did not exit within {timeout}s")


# ---------------------------------------------------------------------------
# raw HTTP over a socket


class Response:
    def __init__(self, version, status, reason, headers, body, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value), names as sent
        self.body = body
        self.raw_head = raw_head

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.headers!r} {self.body[:200]!r}>"


class ProtocolError(AssertionError):
    pass


def build_request(method, target, body=None, headers=None, version="HTTP/1.1", host=True):
    """Bytes of one request. Adds Host and (for a body) Content-Length unless given."""
    if isinstance(body, str):
        body = body.encode()
    hdrs = list(headers or [])
    names = {k.lower() for k, _ in hdrs}
    if host and "host" not in names:
        hdrs.insert(0, ("Host", "127.0.0.1"))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        hdrs.append(("Content-Length", str(len(body))))
    head = f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs) + "\r\n"
    return head.encode("latin-1") + (body or b"")


class RawConn:
    """A client socket with a read buffer and bounded reads."""

    MAX_HEAD = 64 * 1024
    MAX_BODY = 8 * 1024 * 1024

    def __init__(self, port, timeout=5.0, tls=None):
        """tls: an ssl.SSLContext to speak TLS with (server name "localhost")."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""
        self.eof = False
        self.timeout = timeout

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def request(self, method, target, body=None, headers=None, version="HTTP/1.1", timeout=None):
        self.send(build_request(method, target, body, headers, version))
        return self.read_response(timeout=timeout)

    def _fill(self, deadline):
        """Read more bytes into buf. False on EOF; raises TimeoutError past deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for data from server")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("timed out waiting for data from server") from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_response(self, timeout=None, head_only=False):
        """Read one full response (status line, headers, body); head_only:
        the answer to HEAD, whose Content-Length describes a body never sent."""
        deadline = time.monotonic() + (timeout or self.timeout)
        for _ in range(100000):
            if b"\r\n\r\n" in self.buf:
                break
            if len(self.buf) > self.MAX_HEAD:
                raise ProtocolError(f"response head too large: {self.buf[:200]!r}")
            if self.eof or not self._fill(deadline):
                raise ProtocolError(f"connection closed before a full response head; got {self.buf!r}")
        else:
            raise ProtocolError("too many reads for a response head")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {lines[0]!r}")
        version, status = parts[0], int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers = []
        for line in lines[1:]:
            if ":" not in line:
                raise ProtocolError(f"bad header line {line!r}")
            k, v = line.split(":", 1)
            headers.append((k.strip(), v.strip()))
        resp = Response(version, status, reason, headers, b"", head)
        if 100 <= status < 200 or status in (204, 304) or head_only:
            return resp
        cl = resp.header("Content-Length")
        te = resp.header("Transfer-Encoding")
        if cl is not None:
            n = int(cl)
            if n > self.MAX_BODY:
                raise ProtocolError(f"Content-Length {n} too large")
            for _ in range(100000):
                if len(self.buf) >= n:
                    break
                if self.eof or not self._fill(deadline):
                    raise ProtocolError(f"closed mid-body: wanted {n}, have {len(self.buf)}")
            resp.body, self.buf = self.buf[:n], self.buf[n:]
        elif te is not None and te.lower() == "chunked":
            resp.body = self._read_chunked(deadline)
        else:
            for _ in range(100000):
                if self.eof or not self._fill(deadline):
                    break
                if len(self.buf) > self.MAX_BODY:
                    raise ProtocolError("body too large")
            resp.body, self.buf = self.buf, b""
        return resp

    def _read_line(self, deadline):
        for _ in range(100000):
            if b"\r\n" in self.buf:
                line, self.buf = self.buf.split(b"\r\n", 1)
                return line
            if self.eof or not self._fill(deadline):
                raise ProtocolError("closed in chunked body")
        raise ProtocolError("too many reads")

    def _read_chunked(self, deadline):
        body = b""
        for _ in range(100000):
            size = int(self._read_line(deadline).split(b";")[0], 16)
            if size == 0:
                for _ in range(1000):
                    if self._read_line(deadline) == b"":
                        return body
                raise ProtocolError("endless trailers")
            for _ in range(100000):
                if len(self.buf) >= size + 2:
                    break
                if self.eof or not self._fill(deadline):
                    raise ProtocolError("closed in chunk")
            body += self.buf[:size]
            self.buf = self.buf[size + 2:]
        raise ProtocolError("too many chunks")

    def wait_closed(self, timeout=3.0):
        """True if the server closes (EOF or reset) within timeout.
        Bytes that arrive meanwhile are kept in self.buf."""
        if self.eof:
            return True
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            try:
                if not self._fill(deadline):
                    return True
            except TimeoutError:
                return False
            except OSError:
                return True
        return False

    def is_open(self, wait=0.2):
        """True if the server has neither closed nor sent anything within `wait`."""
        before = len(self.buf)
        return not self.wait_closed(wait) and len(self.buf) == before


def rss_kb(pid):
    """VmRSS of a process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
