"""Fixtures for the kvcache end-to-end tests (helpers live in helpers.py)."""

import pytest
import requests

from helpers import RawConn, launch


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The shared server most tests talk to."""
    srv = launch(tmp_path_factory.mktemp("server"), ["--memory-limit", "64M"])
    yield srv
    rc = srv.stop()
    assert rc == 0, f"shared server exit code {rc} after SIGTERM: {srv.describe()}"


@pytest.fixture
def start_server(tmp_path):
    """Factory: start_server(*flags, env=None, pass_port=True, port=None, wait=True, wrap=()).
    Servers still running at teardown get SIGTERM and must exit 0."""
    started = []

    def factory(*flags, env=None, pass_port=True, port=None, wait=True, wrap=()):
        srv = launch(tmp_path, flags, env=env, port=port, pass_port=pass_port, wait=wait, wrap=wrap)
        started.append(srv)
        return srv

    yield factory
    problems = []
    for srv in started:
        if srv.alive():
            rc = srv.stop()
            if rc != 0:
                problems.append(f"exit code {rc} after SIGTERM: {srv.describe()}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def session(server):
    with requests.Session() as s:
        yield s


@pytest.fixture
def raw(server):
    """Factory of raw connections to the shared server, closed at teardown."""
    conns = []

    def factory(port=None, timeout=5.0):
        c = RawConn(port or server.port, timeout=timeout)
        conns.append(c)
        return c

    yield factory
    for c in conns:
        c.close()

