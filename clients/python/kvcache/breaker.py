"""A circuit breaker per node: stop sending to a node that is failing, and send
its keys where HAProxy sends them while it has that node DOWN.

    closed --(`failures` failures in a row)--> open --(backoff elapsed)--> probing
    probing --(GET /health answers 200)--> closed
    probing --(anything else)--> open, with the backoff doubled (up to max_backoff)

A failure is a connection refused, reset or closed without an answer, a
timeout, or a 503; any other answer (a 404 or a 400 included) is a success
and ends the run. Only one probe runs at a time, on its own thread, so no
caller waits for it. State changes are logged (logger "kvcache", warning
when a breaker opens, info when it closes) and counted (Breaker.stats()).
"""

import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("kvcache")

CLOSED = "closed"
OPEN = "open"
PROBING = "probing"  # open, with its one probe under way


@dataclass(frozen=True)
class BreakerPolicy:
    failures: int = 5  # failures in a row that open the breaker
    backoff: float = 1.0  # seconds open before the first probe
    max_backoff: float = None  # the backoff doubles after each failed probe, up to this (30 s or backoff)

    def __post_init__(self):
        if self.max_backoff is None:
            object.__setattr__(self, "max_backoff", max(30.0, self.backoff))
        if not isinstance(self.failures, int) or self.failures < 1:
            raise ValueError(f"failures must be a positive integer: {self.failures!r}")
        if not self.backoff > 0 or not self.max_backoff >= self.backoff:
            raise ValueError(f"need 0 < backoff <= max_backoff: {self.backoff!r}, {self.max_backoff!r}")


class Breaker:
    """The breaker of one node. `probe()` returns True when the node is healthy;
    `on_change(breaker)` is called after every state change (the Cluster
    rebuilds its set of open nodes there). `clock` and `start` are seams for
    tests: start(fn) runs fn, by default on a new daemon thread."""

    def __init__(self, name, policy, probe, on_change=None, clock=time.monotonic, start=None):
        self.name = name
        self.policy = policy
        self._probe = probe
        self._on_change = on_change or (lambda breaker: None)
        self._clock = clock
        self._start = start or _start_thread
        self._lock = threading.Lock()
        self.state = CLOSED
        self._run = 0  # failures in a row
        self._backoff = policy.backoff
        self._retry_at = 0.0
        self.counts = {"opened": 0, "closed": 0, "failures": 0, "probes": 0, "probe_failures": 0}

    @property
    def is_open(self):
        """True while requests must not go to the node (open or probing). When
        the backoff has elapsed this starts the probe, once."""
        if self.state == CLOSED:
            return False
        if self.state == OPEN and self._clock() >= self._retry_at:
            self._begin_probe()
        return True

    def success(self):
        if self._run:  # no lock on the hot path when nothing is to change
            with self._lock:
                self._run = 0

    def failure(self, reason=""):
        changed = False
        with self._lock:
            self.counts["failures"] += 1
            if self.state != CLOSED:
                return
            self._run += 1
            if self._run >= self.policy.failures:
                self.state = OPEN
                self._backoff = self.policy.backoff
                self._retry_at = self._clock() + self._backoff
                self.counts["opened"] += 1
                changed = True
        if changed:
            log.warning("kvcache: %s: circuit breaker open after %d failures in a row (last: %s); "
                        "its keys go to the next node of the ring; probe in %g s",
                        self.name, self.policy.failures, reason, self._backoff)
            self._on_change(self)

    def _begin_probe(self):
        with self._lock:
            if self.state != OPEN or self._clock() < self._retry_at:
                return
            self.state = PROBING
            self.counts["probes"] += 1
        self._start(self._run_probe)

    def _run_probe(self):
        try:
            healthy = bool(self._probe())
            reason = "" if healthy else "not healthy"
        except Exception as e:  # noqa: BLE001  any failure of the probe keeps the breaker open
            healthy, reason = False, str(e)
        with self._lock:
            if healthy:
                self.state = CLOSED
                self._run = 0
                self.counts["closed"] += 1
            else:
                self.state = OPEN
                self._backoff = min(self._backoff * 2, self.policy.max_backoff)
                self._retry_at = self._clock() + self._backoff
                self.counts["probe_failures"] += 1
            backoff = self._backoff
        if healthy:
            log.info("kvcache: %s: circuit breaker closed (GET /health answered); its keys come back to it",
                     self.name)
            self._on_change(self)
        else:
            log.info("kvcache: %s: probe failed (%s); next probe in %g s", self.name, reason, backoff)

    def stats(self):
        """{"state": ..., "opened": n, "closed": n, "failures": n, "probes": n, "probe_failures": n}"""
        with self._lock:
            return dict(self.counts, state=self.state)


def _start_thread(fn):
    threading.Thread(target=fn, name="kvcache-probe", daemon=True).start()
