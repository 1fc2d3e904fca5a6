"""kvcache.Client: one kvcache node (or HAProxy in front of several) over HTTP/1.1.

Keep-alive connections live in a pool shared by every thread using the client;
a request takes one (or opens one), and gives it back after reading the answer.
Every call is bounded by `timeout` seconds in all: connecting, sending and
receiving together, a batch's requests included (the socket's timeout is set
to what is left before each connect, send and receive, so an answer that
trickles in still ends the call at its deadline). Not bounded: resolving the
host name (getaddrinfo), done by the system on every new connection; give an
IP address, or a name the system resolves without delay (/etc/hosts, a local
resolver), where that matters.
"""

import io

import http.client
import json
import socket
import ssl
import time
import urllib.parse
from collections import deque

from . import validation
from .errors import KvcacheError, ServerError, Timeout, Unavailable, error_for

DEFAULT_TIMEOUT = 5.0  # seconds, HAProxy's `timeout server` in deploy/haproxy/haproxy.cfg
DEFAULT_POOL_SIZE = 32  # idle connections kept per node


class _Stale(Exception):
    """A reused keep-alive connection the server had closed: try a fresh one."""


class _Bounded:
    """An HTTP connection whose every send and receive is bounded by `deadline`
    (a time.monotonic() value the caller sets before each request): each one
    gets only the time left, so a call ends at its deadline however the bytes
    come (one recv per byte included)."""

    deadline = None

    def send(self, data):
        if self.sock is not None and self.deadline is not None:
            _bound(self.sock, _left(self.deadline))
        super().send(data)

    def response_class(self, sock, debuglevel=0, method=None):
        return http.client.HTTPResponse(_DeadlineSocket(sock, self.deadline), debuglevel, method=method)


class _HTTPConnection(_Bounded, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Bounded, http.client.HTTPSConnection):
    pass


class _DeadlineSocket:
    """What http.client.HTTPResponse reads from: makefile() gives a buffered
    reader whose every recv is bounded by the time left before the deadline."""

    def __init__(self, sock, deadline):
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode):
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock, deadline):
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self):
        return True

    def readinto(self, b):
        if self._deadline is not None:
            _bound(self._sock, _left(self._deadline))
        return self._sock.recv_into(b)


def _left(deadline):
    """Seconds left before deadline; socket.timeout when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout()
    return left


class Connections:
    """The keep-alive connections to one node: a LIFO of idle ones (the most
    recently used is the likeliest to be alive). deque's append and pop are
    atomic, so threads share it without a lock."""

    def __init__(self, host, port, ssl_context, max_idle):
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.max_idle = max_idle
        self._idle = deque()

    def take(self):
        try:
            return self._idle.pop(), True
        except IndexError:
            if self.ssl_context is None:
                return _HTTPConnection(self.host, self.port), False
            return _HTTPSConnection(self.host, self.port, context=self.ssl_context), False

    def give_back(self, conn):
        if len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self):
        while True:
            try:
                self._idle.pop().close()
            except IndexError:
                return


def _ssl_context(ca, cert, key, verify):
    context = ssl.create_default_context(cafile=ca)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert:
        context.load_cert_chain(cert, key)
    return context


def _decode(status, body, node):
    try:
        return json.loads(body)
    except ValueError:
        raise ServerError(f"unreadable answer ({status}): {body[:200]!r}", status, node) from None


class Client:
    """A kvcache node at `url` ("http://host:7171" or "https://...").

    token:   a bearer token sent with every request (--auth-token-file).
    timeout: seconds a call may take in all; past it, kvcache.Timeout.
    ca:      a CA bundle to verify the server's certificate (https; default: the system's).
    cert, key: a client certificate and its key for mTLS (--tls-client-ca on the server);
             key may be omitted when cert holds both.
    verify:  False skips certificate checks (tests only).
    pool_size: idle keep-alive connections kept.
    """

    def __init__(self, url, token=None, timeout=DEFAULT_TIMEOUT, ca=None, cert=None, key=None, verify=True,
                 pool_size=DEFAULT_POOL_SIZE):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"url must be http://host[:port] or https://host[:port]: {url!r}")
        if parsed.path not in ("", "/") or parsed.query:
            raise ValueError(f"url takes no path or query: {url!r}")
        if not timeout or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds: {timeout!r}")
        self.url = f"{parsed.scheme}://{parsed.netloc}"
        self.timeout = float(timeout)
        context = _ssl_context(ca, cert, key, verify) if parsed.scheme == "https" else None
        if context is None and (ca or cert):
            raise ValueError("ca and cert are for https:// urls")
        port = parsed.port or (443 if context else 7171)
        self._pool = Connections(parsed.hostname, port, context, pool_size)
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._headers = auth
        self._json_headers = dict(auth, **{"Content-Type": "application/json"})

    # -- the calls ----------------------------------------------------------

    def get(self, key):
        """The value of key, or None when it is absent (or expired)."""
        validation.check_key(key)
        status, body = self.request("GET", "/get?key=" + urllib.parse.quote(key, safe=""))
        if status == 200:
            return _decode(status, body, self.url)["value"]
        if status == 404 and body == b'{"status":"ERROR","message":"Key not found."}':
            return None
        raise self._error(status, body)

    def put(self, key, value, ttl=None):
        """Stores key = value; ttl in whole seconds (None or 0: no expiry)."""
        validation.check_item(key, value, ttl)
        status, body = self.request("POST", "/put", _put_body(key, value, ttl))
        if status != 200:  # a 200 from /put is always {"status":"OK",...}: not parsed
            raise self._error(status, body)

    def delete(self, key):
        """Removes key; True if it was there."""
        validation.check_key(key)
        status, body = self.request("POST", "/delete", json.dumps({"key": key}).encode())
        if status == 404 and body == b'{"status":"ERROR","message":"Key not found."}':
            return False
        if status != 200:
            raise self._error(status, body)
        return True

    def mget(self, keys):
        """[value or None, ...] in the order of keys, in requests of at most 1,000
        keys and 64 KiB (the server's limits), all within one timeout."""
        keys = list(keys)
        validation.check_keys(keys)
        return self._mget(keys, time.monotonic() + self.timeout)

    def mput(self, items, ttl=None):
        """Stores items: a mapping {key: value} or a sequence of (key, value) or
        (key, value, ttl); `ttl` applies to items without one. All are checked
        before any is sent; requests of at most 1,000 items and 64 KiB, all
        within one timeout (on a Timeout, some requests may have been applied)."""
        items = _items(items, ttl)
        validation.check_items(items)
        self._mput(items, time.monotonic() + self.timeout)

    def health(self):
        """True when the node answers GET /health with 200; raises otherwise."""
        self._expect_ok(self.request("GET", "/health"))
        return True

    def snapshot(self):
        """Writes a snapshot now (POST /snapshot); the server's answer as a dict."""
        return self._expect_ok(self.request("POST", "/snapshot", b""))

    def metrics(self):
        """The node's Prometheus exposition, as text."""
        status, body = self.request("GET", "/metrics")
        if status != 200:
            raise self._error(status, body)
        return body.decode()

    def close(self):
        """Closes the idle connections (the client stays usable)."""
        self._pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"kvcache.Client({self.url!r})"

    # -- the parts Cluster shares -----------------------------------------

    def _mget(self, keys, deadline):
        values = []
        for body in _bodies(b"keys", [json.dumps(k).encode() for k in keys]):
            values.extend(self._expect_ok(self.request("POST", "/mget", body, deadline))["values"])
        return values

    def _mput(self, items, deadline):
        for body in _bodies(b"items", [json.dumps(_item(*item)).encode() for item in items]):
            status, answer = self.request("POST", "/mput", body, deadline)
            if status != 200:
                raise self._error(status, answer)

    def _expect_ok(self, answer):
        status, body = answer
        if status != 200:
            raise self._error(status, body)
        return _decode(status, body, self.url)

    def _error(self, status, body):
        try:
            message = json.loads(body)["message"]
        except (ValueError, KeyError, TypeError):
            message = body[:200].decode(errors="replace") or f"HTTP {status}"
        return error_for(status, message, self.url)

    def request(self, method, target, body=None, deadline=None):
        """(status, body bytes) of one request, within the timeout (or `deadline`,
        a time.monotonic() value). Raises Timeout, or Unavailable when the node
        cannot be reached or closes the connection without answering. A reused
        connection the server had closed is replaced once, transparently."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        headers = self._headers if body is None else self._json_headers
        try:
            return self._attempt(method, target, body, headers, deadline)
        except _Stale:
            return self._attempt(method, target, body, headers, deadline, fresh=True)

    def _attempt(self, method, target, body, headers, deadline, fresh=False):
        pool = self._pool
        if fresh:
            pool.close()  # its siblings are likely stale too (a restarted node)
        conn, reused = pool.take()
        conn.deadline = deadline  # bounds each send and recv (_Bounded)
        try:
            if conn.sock is None:
                conn.timeout = _left(deadline)
                conn.connect()
            conn.request(method, target, body, headers)
            response = conn.getresponse()
            data = response.read()
        except (socket.timeout, TimeoutError):
            conn.close()
            raise Timeout(f"no answer within {self.timeout:g} s", None, self.url) from None
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
            conn.close()
            if reused:
                raise _Stale() from e
            raise Unavailable(f"connection closed without an answer: {e}", None, self.url) from None
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            if isinstance(e, ssl.SSLError) and not isinstance(e, ssl.SSLEOFError):
                raise Unavailable(f"TLS: {e}", None, self.url) from None
            raise Unavailable(f"{type(e).__name__}: {e}", None, self.url) from None
        if response.will_close:
            conn.close()
        else:
            pool.give_back(conn)
        return response.status, data


def _bodies(field, encoded):
    """Request bodies {"field":[...]} of the JSON-encoded elements, each within the
    server's limits: at most 1,000 elements and 64 KiB."""
    head, tail = b'{"' + field + b'":[', b"]}"
    chunk, size = [], len(head) + len(tail)
    for e in encoded:
        if chunk and (len(chunk) == validation.MAX_BATCH_ITEMS or size + len(e) + 1 > validation.MAX_BODY_BYTES):
            yield head + b",".join(chunk) + tail
            chunk, size = [], len(head) + len(tail)
        chunk.append(e)
        size += len(e) + 1
    if chunk:
        yield head + b",".join(chunk) + tail


SLACK = 0.005  # seconds a call may run past its deadline rather than reset a socket's timeout


def _bound(sock, left):
    """Makes sock's timeout at most `left`, and at least left - SLACK. Setting it
    costs two fcntl system calls (CPython toggles O_NONBLOCK), about 5% of a
    request here, so a timeout already within that window is left alone: in the
    steady state (a reused connection, a send that did not block) none is made,
    and a call ends at most SLACK after its deadline."""
    timeout = sock.gettimeout()
    if timeout is None or timeout > left + SLACK or timeout < left - SLACK:
        sock.settimeout(left)


def _put_body(key, value, ttl):
    if ttl:
        return json.dumps({"key": key, "value": value, "ttl": ttl}).encode()
    return json.dumps({"key": key, "value": value}).encode()


def _item(key, value, ttl=None):
    return {"key": key, "value": value, "ttl": ttl} if ttl else {"key": key, "value": value}


def _items(items, ttl=None):
    """A list of (key, value, ttl) from a mapping or a sequence of pairs or triples."""
    if hasattr(items, "items"):
        return [(k, v, ttl) for k, v in items.items()]
    out = []
    for item in items:
        if len(item) == 2:
            out.append((item[0], item[1], ttl))
        elif len(item) == 3:
            out.append(tuple(item))
        else:
            raise ValueError(f"an item is (key, value) or (key, value, ttl): {item!r}")
    return out


__all__ = ["Client", "KvcacheError"]
