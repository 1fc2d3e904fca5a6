"""The command line an operator reaches for: --version/-V, -h, --help winning
over a bad value, --check-config (nothing bound; exit 0 or 2 with what to
fix), TLS file errors that say what to fix (at start and on SIGHUP), and
--health-check saying why it failed."""

import http.server
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from helpers import free_port, run_binary

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(not OPENSSL, reason="the openssl command is not installed")


def out(p):
    return (p.stdout + p.stderr).decode(errors="replace")


def openssl(*args, cwd):
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pems(tmp_path_factory):
    """An EC certificate for localhost and its key, and an RSA key of nothing."""
    d = tmp_path_factory.mktemp("pems")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", "ec.key", "-out", "ec.pem", cwd=d)
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "rsa.key", cwd=d)
    return d


# --- --version, -V, -h, --help


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_version(flag):
    p = run_binary([flag])
    assert p.returncode == 0, out(p)
    assert re.fullmatch(r"kvcache \d+\.\d+\.\d+\n", p.stdout.decode()), out(p)


@pytest.mark.parametrize("args", [["-h"], ["--help", "--port", "abc"], ["--port", "abc", "--help"],
                                  ["--nope", "-h"]], ids=" ".join)
def test_help_wins_over_everything_else(args):
    p = run_binary(args, env={"KVCACHE_MEMORY_LIMIT": "lots"})
    assert p.returncode == 0, out(p)
    assert p.stdout.decode().startswith("kvcache: an in-memory key-value cache"), out(p)
    assert "--check-config" in p.stdout.decode()


# --- --check-config


def test_check_config_accepts_a_good_configuration_and_binds_nothing(tmp_path, pems):
    (tmp_path / "tokens").write_text("a-token-of-some-length\n")
    (tmp_path / "tokens").chmod(0o600)
    with socket.socket() as busy:  # the configured port is taken: a check that bound it would fail
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = run_binary(["--check-config", "--port", str(port), "--bind", "127.0.0.1",
                        "--tls-cert", str(pems / "ec.pem"), "--tls-key", str(pems / "ec.key"),
                        "--auth-token-file", str(tmp_path / "tokens"),
                        "--snapshot-path", str(tmp_path / "cache.snap")])
    assert p.returncode == 0, out(p)
    assert p.stdout.decode() == "kvcache: configuration OK\n"


def test_check_config_names_the_credentials_it_cannot_read(tmp_path, pems):
    # An ExecReload= process under systemd 252 cannot read the LoadCredential=
    # copies: named, not failed (the server checks them at the SIGHUP).
    # Outside that directory the same missing file fails.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    token = credentials / "kvcache-token"
    key = credentials / "tls-key"
    args = ["--check-config", "--port", str(free_port()), "--auth-token-file", str(token),
            "--tls-cert", str(pems / "ec.pem"), "--tls-key", str(key)]
    p = run_binary(args, env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert p.returncode == 0, out(p)
    assert f"kvcache: not checked: {token} (a copy of a systemd credential" in p.stdout.decode(), out(p)
    assert f"kvcache: not checked: {key} " in p.stdout.decode(), out(p)
    assert p.stdout.decode().endswith("kvcache: configuration OK\n")
    p = run_binary(args, env={"CREDENTIALS_DIRECTORY": str(tmp_path / "elsewhere")})
    assert p.returncode == 2 and str(token) in p.stderr.decode(), out(p)


@pytest.mark.parametrize("case", ["bad flag", "bad variable", "no token file", "empty token file", "key not PEM",
                                  "key of another certificate", "no CA", "no snapshot directory",
                                  "snapshot unreadable"])
def test_check_config_exits_2_with_what_to_fix(case, tmp_path, pems):
    (tmp_path / "empty").write_text("")
    (tmp_path / "snap").mkdir()
    unreadable = tmp_path / "snap" / "cache.snap"
    unreadable.write_text("x")
    tls = ["--tls-cert", str(pems / "ec.pem"), "--tls-key", str(pems / "ec.key")]
    args, env, expect = {
        "bad flag": (["--port", "abc"], {}, 'invalid --port "abc"'),
        "bad variable": ([], {"KVCACHE_MEMORY_LIMIT": "lots"}, "KVCACHE_MEMORY_LIMIT"),
        "no token file": (["--auth-token-file", str(tmp_path / "none")], {}, str(tmp_path / "none")),
        "empty token file": (["--auth-token-file", str(tmp_path / "empty")], {}, str(tmp_path / "empty")),
        "key not PEM": (["--tls-cert", str(pems / "ec.pem"), "--tls-key", str(pems / "ec.pem")], {},
                        f"--tls-key {pems / 'ec.pem'}: not a PEM private key"),
        "key of another certificate": (["--tls-cert", str(pems / "ec.pem"), "--tls-key", str(pems / "rsa.key")], {},
                                       "does not match the certificate in --tls-cert"),
        "no CA": (tls + ["--tls-client-ca", str(tmp_path / "none.pem")], {}, "--tls-client-ca"),
        "no snapshot directory": (["--snapshot-path", str(tmp_path / "nodir" / "cache.snap")], {},
                                  f"directory {tmp_path / 'nodir'}"),
        "snapshot unreadable": (["--snapshot-path", str(unreadable)], {}, str(unreadable)),
    }[case]
    if case == "snapshot unreadable":
        if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() == "0":
            unreadable.unlink()
            unreadable.mkdir()  # root reads any file: a directory where the file should be
            expect = "not a regular file"
        else:
            unreadable.chmod(0)
    p = run_binary(["--check-config", "--port", str(free_port())] + args, env=env)
    assert p.returncode == 2, out(p)
    assert expect in p.stderr.decode(), out(p)
    assert not p.stdout, out(p)


# --- TLS file errors that say what to fix


@needs_openssl
def test_tls_key_errors_say_what_to_fix_at_start(pems):
    p = run_binary(["--port", str(free_port()), "--tls-cert", str(pems / "ec.pem"), "--tls-key", str(pems / "ec.pem")])
    assert p.returncode == 2
    assert f"--tls-key {pems / 'ec.pem'}: not a PEM private key" in p.stderr.decode(), out(p)
    assert "PEM lib" not in out(p)
    p = run_binary(["--port", str(free_port()), "--tls-cert", str(pems / "ec.pem"), "--tls-key", str(pems / "rsa.key")])
    assert p.returncode == 2
    text = p.stderr.decode()
    assert (f"--tls-key {pems / 'rsa.key'} does not match the certificate in --tls-cert {pems / 'ec.pem'} "
            "(key: RSA 2048-bit, certificate's key: EC 256-bit)") in text, text
    assert "no certificate assigned" not in text


@needs_openssl
def test_tls_key_errors_say_what_to_fix_on_sighup(start_server, tmp_path, pems):
    shutil.copy(pems / "ec.pem", tmp_path / "cert.pem")
    shutil.copy(pems / "ec.key", tmp_path / "key.pem")
    srv = start_server("--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"))
    shutil.copy(pems / "rsa.key", tmp_path / "key.pem")
    srv.send_signal(signal.SIGHUP)
    want = (f"SIGHUP: keeping the current TLS certificate: --tls-key {tmp_path / 'key.pem'} does not match the "
            f"certificate in --tls-cert {tmp_path / 'cert.pem'} (key: RSA 2048-bit")
    for _ in range(100):
        if want in srv.stderr():
            break
        time.sleep(0.05)
    assert want in srv.stderr(), srv.stderr()
    # The check the unit runs before its SIGHUP says the same, and exits 2.
    p = run_binary(["--check-config", "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")])
    assert p.returncode == 2 and "does not match the certificate" in p.stderr.decode(), out(p)


# --- --health-check says why


def health_check(port, *flags):
    p = run_binary(["--health-check", "--port", str(port), *flags], timeout=15)
    assert p.returncode == 1, out(p)
    return p.stderr.decode()


def test_health_check_says_connection_refused():
    port = free_port()
    assert f"health check of http://127.0.0.1:{port}/health failed: connection refused" in health_check(port)


class _Status503(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_health_check_says_the_status():
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status503) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            assert "failed: status 503" in health_check(httpd.server_address[1])
        finally:
            httpd.shutdown()


def test_health_check_says_timeout():
    with socket.socket() as silent:  # connects (the kernel's backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        assert "failed: timeout" in health_check(silent.getsockname()[1])


@needs_openssl
def test_health_check_says_tls_error(server, pems):
    # A TLS probe of a plain-HTTP server.
    text = health_check(server.port, "--tls-cert", str(pems / "ec.pem"), "--tls-key", str(pems / "ec.key"))
    assert f"health check of https://127.0.0.1:{server.port}/health failed: TLS error: " in text, text
