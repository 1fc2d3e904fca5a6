"""tools/systemd/kvcache.service under a real systemd 252, as an operator runs it.

tools/systemd/nspawn.sh boots a Debian 12 root (debootstrap, cached under
/var/cache/kvcache-test) in systemd-nspawn with the release binary, the unit
and the env file installed as docs/operations.md says, then these tests drive
systemctl inside it and talk to the server with curl on the container's own
loopback (port 7171, the shipped default). One container for the module;
it is powered off, and its copy of the root removed, on every path.

Skipped, with the reason, without root, systemd-nspawn (systemd-container),
nsenter, a cached root or debootstrap, under a sanitizer build (the container
runs the release binary under the full hardening), or where the container
does not boot.
"""

import contextlib
import os
import re
import shutil
import subprocess
import time

import pytest

from helpers import KVCACHE_BIN, REPO, SANITIZER

NSPAWN_SH = REPO / "tools" / "systemd" / "nspawn.sh"
STATE_DIR = "var/lib/private/kvcache"  # DynamicUser's StateDirectory, seen from the host
TOKEN_A = "token-a-0123456789abcdef"
TOKEN_B = "token-b-0123456789abcdef"
TIMEOUT_STOP = 45  # TimeoutStopSec= in the unit
DROP_IN = "/etc/systemd/system/kvcache.service.d"


def why_not():
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (package {package}; tools/install-deps.sh test)"
    if SANITIZER:
        return f"the container runs the release binary, not a {SANITIZER} build"
    if not os.access(KVCACHE_BIN, os.X_OK):
        return f"no binary at {KVCACHE_BIN}"
    root = subprocess.run(["bash", "-c", f"ls -d /var/cache/kvcache-test/nspawn-* 2>/dev/null"],
                          capture_output=True, text=True).stdout
    if not root and shutil.which("debootstrap") is None:
        return "no cached root and no debootstrap to make one (tools/install-deps.sh test)"
    return None


pytestmark = pytest.mark.skipif(why_not() is not None, reason=why_not() or "")


class Container:
    def __init__(self, directory):
        self.dir = directory
        self.root = directory / "root"

    def sh(self, script, check=True, timeout=60):
        result = subprocess.run(["bash", str(NSPAWN_SH), "run", str(self.dir), "sh", "-c", script],
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            pytest.fail(f"in the container: {script}\nexit {result.returncode}\n{result.stdout}{result.stderr}")
        return result

    def systemctl(self, *args, check=True):
        # Type=notify: start and restart return once the server listens, so
        # every request below follows them with no wait.
        return self.sh("systemctl " + " ".join(args), check=check)

    def curl(self, method, path, body=None, token=None):
        """(status, body) of a request to the unit's server on 127.0.0.1:7171."""
        args = f"-s -X {method} -w '\\n%{{http_code}}' --max-time 5"
        if token:
            args += f" -H 'Authorization: Bearer {token}'"
        if body is not None:
            args += f" -d '{body}'"
        out = self.sh(f"curl {args} 'http://127.0.0.1:7171{path}'", check=False).stdout
        text, _, status = out.rpartition("\n")
        return int(status or 0), text

    def show(self, *properties):
        out = self.systemctl("show", "kvcache", *(f"-p {p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self):
        """This run's journal lines of the unit (the current or last invocation)."""
        invocation = self.show("InvocationID")["InvocationID"]
        return self.sh(f"journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID={invocation}").stdout

    def startup_line(self):
        lines = [line for line in self.journal().splitlines() if " listening on " in line]
        assert lines, f"no start-up line in the journal:\n{self.journal()}"
        return lines[-1]

    def drop_in(self, name, text):
        self.sh(f"mkdir -p {DROP_IN} && printf '[Service]\\n{text}\\n' > {DROP_IN}/{name}.conf")
        self.systemctl("daemon-reload")

    def remove_drop_in(self, name):
        self.sh(f"rm -f {DROP_IN}/{name}.conf")
        self.systemctl("daemon-reload")

    def wait_journal(self, text, seconds=10):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if text in self.journal():
                return True
            time.sleep(0.1)
        return False


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    directory = tmp_path_factory.mktemp("nspawn")
    env = dict(os.environ, KVCACHE=KVCACHE_BIN)
    try:
        # The first run builds the root with debootstrap (about 3 minutes).
        boot = subprocess.run(["bash", str(NSPAWN_SH), "boot", str(directory)], env=env,
                              capture_output=True, text=True, timeout=900)
        if boot.returncode != 0:
            pytest.skip(f"the container does not boot here: {boot.stderr.strip()[-500:]}")
        yield Container(directory)
    finally:
        halt = subprocess.run(["bash", str(NSPAWN_SH), "halt", str(directory)], capture_output=True, text=True,
                              timeout=120)
        assert halt.returncode == 0, halt.stderr
        assert not (directory / "root").exists()


def test_start_put_get_and_the_journal(box):
    box.systemctl("start", "kvcache")
    assert box.systemctl("is-active", "kvcache").stdout.strip() == "active"
    assert box.curl("POST", "/put", '{"key": "k1", "value": "v1"}')[0] == 200
    assert box.curl("GET", "/get?key=k1") == (200, '{"status":"OK","key":"k1","value":"v1"}')
    # stderr goes to the journal: the start-up line, and the snapshot line before it
    line = box.startup_line()
    assert "listening on 0.0.0.0:7171" in line and 'snapshot_path="/var/lib/kvcache/cache.snap"' in line, line
    assert "no snapshot at /var/lib/kvcache/cache.snap: starting empty" in box.journal()


def test_restart_keeps_the_data(box):
    assert box.curl("POST", "/put", '{"key": "k2", "value": "kept"}')[0] == 200
    before = box.show("MainPID")["MainPID"]
    box.systemctl("restart", "kvcache")
    assert box.show("MainPID")["MainPID"] != before
    # the snapshot is in the StateDirectory (the dynamic user may be another one now)
    assert (box.root / STATE_DIR / "cache.snap").is_file()
    assert re.search(r"snapshot /var/lib/kvcache/cache.snap loaded: [1-9]\d* entries", box.journal()), box.journal()
    assert box.curl("GET", "/get?key=k2") == (200, '{"status":"OK","key":"k2","value":"kept"}')
    assert box.curl("GET", "/get?key=k1")[0] == 200


def accepts_only(box, good, bad):
    return (box.curl("GET", "/get?key=k1", token=good)[0], box.curl("GET", "/get?key=k1", token=bad)[0]) == (200, 401)


@contextlib.contextmanager
def configured(box, name, settings, cleanup):
    """The unit restarted with a drop-in; afterwards without it, and `cleanup` run."""
    box.drop_in(name, settings)
    try:
        box.systemctl("restart", "kvcache")
        yield
    finally:
        box.remove_drop_in(name)
        box.sh(cleanup)
        box.systemctl("restart", "kvcache")


def reload_and_wait(box, log_line):
    pid = box.show("MainPID")["MainPID"]
    box.systemctl("reload", "kvcache")
    assert box.wait_journal(log_line), box.journal()
    assert box.show("MainPID")["MainPID"] == pid, "reload restarted the service"


def test_reload_rotates_the_bearer_tokens(box):
    # Without a token file, reload is a logged no-op (a warning in the journal).
    reload_and_wait(box, "SIGHUP: no --auth-token-file to reload")
    # A token file the service reads itself: in its StateDirectory, owned by its user.
    box.sh(f"umask 077; printf '{TOKEN_A}\\n' > /tmp/tokens && "
           "install -m 0600 -o $(stat -c %u /var/lib/private/kvcache) /tmp/tokens /var/lib/private/kvcache/tokens")
    with configured(box, "tokens", "Environment=KVCACHE_AUTH_TOKEN_FILE=/var/lib/kvcache/tokens",
                    "rm -f /var/lib/private/kvcache/tokens"):
        assert accepts_only(box, TOKEN_A, TOKEN_B)
        box.sh(f"printf '{TOKEN_B}\\n' > /var/lib/private/kvcache/tokens")
        reload_and_wait(box, "SIGHUP: 1 token(s) loaded from /var/lib/kvcache/tokens")
        assert accepts_only(box, TOKEN_B, TOKEN_A)
        # A token file that does not load fails the reload itself (the unit's
        # ExecReload= checks first), with what to fix; the server keeps B.
        box.sh("printf 'short\\n' > /var/lib/private/kvcache/tokens")
        pid = box.show("MainPID")["MainPID"]
        failed = box.systemctl("reload", "kvcache", check=False)
        assert failed.returncode != 0, failed
        assert "the token on line 1 is shorter than 16 bytes" in box.journal(), box.journal()
        assert box.show("MainPID")["MainPID"] == pid
        assert accepts_only(box, TOKEN_B, TOKEN_A)


def test_load_credential_tokens_change_at_reload(box):
    # The unit's ExecReload= runs kvcache --check-config, then kill -HUP; for
    # those commands systemd 252 copies the credentials again, so the edited
    # token is in force after the reload (with kill -HUP alone it was not).
    box.sh(f"umask 077; printf '{TOKEN_A}\\n' > /etc/kvcache/token")
    with configured(box, "credential", "LoadCredential=kvcache-token:/etc/kvcache/token\\n"
                                       "Environment=KVCACHE_AUTH_TOKEN_FILE=%%d/kvcache-token",
                    "rm -f /etc/kvcache/token"):
        assert accepts_only(box, TOKEN_A, TOKEN_B)
        box.sh(f"printf '{TOKEN_B}\\n' > /etc/kvcache/token")
        reload_and_wait(box, "SIGHUP: 1 token(s) loaded from /run/credentials/kvcache.service/kvcache-token")
        assert accepts_only(box, TOKEN_B, TOKEN_A)
        box.systemctl("restart", "kvcache")
        assert accepts_only(box, TOKEN_B, TOKEN_A)


def test_stop_writes_the_final_snapshot_and_exits_0(box):
    assert box.curl("POST", "/put", '{"key": "k3", "value": "last"}')[0] == 200
    started = time.monotonic()
    box.systemctl("stop", "kvcache")
    assert time.monotonic() - started < TIMEOUT_STOP
    state = box.show("ExecMainCode", "ExecMainStatus", "Result", "ActiveState")
    # Exited (code 1, CLD_EXITED) with status 0, not killed by SIGTERM, which
    # systemd would count as a success too.
    assert state == {"ExecMainCode": "1", "ExecMainStatus": "0", "Result": "success", "ActiveState": "inactive"}, state
    journal = box.journal()
    assert "writing the final snapshot" in journal and "stopped" in journal, journal
    box.systemctl("start", "kvcache")
    assert box.curl("GET", "/get?key=k3") == (200, '{"status":"OK","key":"k3","value":"last"}')


def test_restore_as_documented(box):
    """docs/operations.md's restore: the file gets the state directory's owner."""
    assert box.curl("POST", "/put", '{"key": "k4", "value": "backed-up"}')[0] == 200
    assert box.curl("POST", "/snapshot")[0] == 200
    box.sh("cp /var/lib/private/kvcache/cache.snap /tmp/cache.snap")
    assert box.curl("POST", "/delete", '{"key": "k4"}')[0] == 200
    box.systemctl("stop", "kvcache")
    # Copied as root without the owner, the file is unreadable to the service.
    box.sh("install -m 0600 /tmp/cache.snap /var/lib/private/kvcache/cache.snap")
    box.systemctl("start", "kvcache", check=False)
    assert box.wait_journal("cannot open snapshot /var/lib/kvcache/cache.snap: Permission denied"), box.journal()
    box.systemctl("stop", "kvcache")
    box.systemctl("reset-failed", "kvcache", check=False)
    # The documented command.
    box.sh('install -m 0600 --owner="$(stat -c %u /var/lib/private/kvcache)" '
           "/tmp/cache.snap /var/lib/private/kvcache/cache.snap")
    box.systemctl("start", "kvcache")
    assert box.curl("GET", "/get?key=k4") == (200, '{"status":"OK","key":"k4","value":"backed-up"}')


def test_memory_max_drop_in_sets_the_auto_limit(box):
    box.drop_in("memory", "MemoryMax=1600M")
    try:
        box.systemctl("restart", "kvcache")
        pid = box.show("MainPID")["MainPID"]
        cgroup = box.sh(f"cat /proc/{pid}/cgroup").stdout
        if not re.search(r"(memory|^0:):/system.slice/kvcache.service$", cgroup, re.M):
            pytest.skip(f"systemd in this container cannot apply MemoryMax= (memory controller not delegated):\n{cgroup}")
        expected = 1600 * 2**20 // 10 * 7
        line = box.startup_line()
        assert f"memory_limit={expected} (auto: 70% of cgroup" in line, line
        status, metrics = box.curl("GET", "/metrics")
        assert status == 200 and f"\nkvcache_memory_limit_bytes {expected}\n" in metrics
    finally:
        box.remove_drop_in("memory")


def test_open_files_are_raised_under_the_resources_filter(box):
    # The server raises its soft RLIMIT_NOFILE to the hard one at start, with
    # SystemCallFilter=~@resources in force: glibc's setrlimit() is prlimit64,
    # which @system-service allows (only the old setrlimit call is filtered).
    box.drop_in("nofile", "LimitNOFILE=1024:8192")
    try:
        box.systemctl("restart", "kvcache")
        assert "open_files=8192 " in box.startup_line()
    finally:
        box.remove_drop_in("nofile")
        box.systemctl("restart", "kvcache")


def test_security_score_is_not_worse(box):
    out = box.sh("systemd-analyze security kvcache.service --no-pager", check=False).stdout
    match = re.search(r"Overall exposure level for kvcache.service: (\d+\.\d+)", out)
    assert match, out[-2000:]
    assert float(match.group(1)) <= 1.2, out[-2000:]
