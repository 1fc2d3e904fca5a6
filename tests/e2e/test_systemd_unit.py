"""Static checks of the systemd unit in tools/systemd/.

Runs `systemd-analyze verify` and the offline `systemd-analyze security` score
on tools/systemd/kvcache.service. No server and no running systemd are needed:
both commands work on files. Skipped when systemd-analyze is not installed
(Debian package `systemd`).

`verify` refuses a unit whose ExecStart binary does not exist, so the unit is
verified inside a throw-away root (--root=): the unit goes to
ROOT/etc/systemd/system/, the binary (build/kvcache if it is built, else a stub
script) to ROOT/usr/local/bin/kvcache, and the host's unit directory is copied
to ROOT/usr/lib/systemd/system/ so that sysinit.target and friends resolve.
"""

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "tools" / "systemd" / "kvcache.service"
ENV_FILE = REPO / "tools" / "systemd" / "kvcache.env"
MAX_EXPOSURE = 2.0
TIMEOUT = 60  # seconds, for every subprocess

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)"
)

# Flags that take a value, i.e. the KVCACHE_* variables the binary reads.
KNOWN_ENV = {
    "KVCACHE_" + name.upper().replace("-", "_")
    for name in (
        "port", "bind", "threads", "memory-limit", "shards", "max-connections",
        "read-timeout", "idle-timeout", "drain-timeout", "log-level",
        "snapshot-path", "snapshot-interval", "snapshot-timeout", "auth-token-file",
        "tls-cert", "tls-key", "tls-client-ca",
    )
}


def run(args, **kwargs):
    return subprocess.run(
        args, capture_output=True, text=True, timeout=TIMEOUT, check=False, **kwargs
    )


def unit_directives():
    """Directive -> list of values, over all sections (comments skipped)."""
    directives = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        directives.setdefault(key.strip(), []).append(value.strip())
    return directives


def find_binary():
    for candidate in (
        os.environ.get("KVCACHE_BIN"),
        os.environ.get("MESON_BUILD_ROOT") and os.path.join(os.environ["MESON_BUILD_ROOT"], "kvcache"),
        REPO / "build" / "kvcache",
    ):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


@pytest.fixture()
def verify_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    (root / "usr" / "local" / "bin").mkdir(parents=True)
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc" / "systemd" / "system" / "kvcache.service")
    target = root / "usr" / "local" / "bin" / "kvcache"
    binary = find_binary()
    if binary is not None:
        shutil.copy(binary, target)
    else:
        target.write_text("#!/bin/sh\nexit 0\n")
    target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    # ExecReload=/bin/kill (procps) must exist in the root too.
    kill = root / "bin" / "kill"
    kill.parent.mkdir()
    kill.write_text("#!/bin/sh\nexit 0\n")
    kill.chmod(0o755)
    for system_dir in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        if os.path.isdir(system_dir):
            shutil.copytree(system_dir, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
            break
    else:
        pytest.skip("no systemd unit directory on this host to resolve sysinit.target")
    return root


def test_unit_has_required_directives():
    d = unit_directives()
    assert d.get("ExecStart") == ["/usr/local/bin/kvcache"]
    assert d.get("EnvironmentFile") == ["-/etc/kvcache/kvcache.env"]
    # kvcache tells systemd when it listens (src/app/service_notify.cc)
    assert d.get("Type") == ["notify"] and d.get("NotifyAccess") == ["main"]
    assert d.get("Restart") == ["on-failure"]
    # systemctl reload: the files checked first (a bad one fails the reload
    # visibly), then SIGHUP re-reads the token and TLS files
    assert d.get("ExecReload") == ["/usr/local/bin/kvcache --check-config", "/bin/kill -HUP $MAINPID"]
    assert d.get("LimitNOFILE") == ["65536"]
    assert d.get("KillSignal") == ["SIGTERM"]
    assert d.get("DynamicUser") == ["yes"]
    assert d.get("CapabilityBoundingSet") == [""]
    # --memory-limit=auto reads /proc/meminfo; ProcSubset=pid would hide it.
    assert "ProcSubset" not in d
    # It is a server: it must be reachable.
    assert "IPAddressDeny" not in d and "PrivateNetwork" not in d
    families = " ".join(d.get("RestrictAddressFamilies", [])).split()
    assert {"AF_INET", "AF_INET6"} <= set(families)


def test_unit_stop_timeout_exceeds_default_drain_timeout():
    value = unit_directives()["TimeoutStopSec"][0]
    match = re.fullmatch(r"(\d+)\s*(s|sec)?", value)
    assert match, f"TimeoutStopSec={value} not in seconds"
    assert int(match.group(1)) > 5 + 30, \
        "must leave room for --drain-timeout (default 5 s) and --snapshot-timeout (default 30 s)"


def test_unit_keeps_snapshots_in_its_state_directory():
    assert unit_directives().get("StateDirectory") == ["kvcache"]
    assert "KVCACHE_SNAPSHOT_PATH=/var/lib/kvcache/cache.snap" in ENV_FILE.read_text().splitlines()


def test_env_example_names_real_flags():
    for number, line in enumerate(ENV_FILE.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            line = line.lstrip("#").strip()
            if not re.match(r"KVCACHE_[A-Z_]+=", line):
                continue  # prose
        match = re.fullmatch(r"(KVCACHE_[A-Z_]+)=(\S*)", line)
        assert match, f"kvcache.env:{number}: not KEY=value: {line!r}"
        assert match.group(1) in KNOWN_ENV, f"kvcache.env:{number}: unknown variable {match.group(1)}"


@needs_systemd_analyze
def test_systemd_analyze_verify(verify_root):
    result = run([SYSTEMD_ANALYZE, "verify", f"--root={verify_root}", "kvcache.service"])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # verify exits 0 on unknown keys and unparsable values, only warning about
    # them: any message about our unit is a failure.
    complaints = [line for line in output.splitlines() if "kvcache.service" in line]
    assert not complaints, "\n".join(complaints)


@needs_systemd_analyze
def test_systemd_analyze_verify_catches_errors(verify_root):
    """The check above would notice a broken unit (guards against a vacuous pass)."""
    unit = verify_root / "etc" / "systemd" / "system" / "kvcache.service"
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    result = run([SYSTEMD_ANALYZE, "verify", f"--root={verify_root}", "kvcache.service"])
    assert "kvcache.service" in result.stdout + result.stderr


@needs_systemd_analyze
def test_systemd_analyze_security_score():
    result = run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(UNIT)],
        env={**os.environ, "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"},
    )
    output = result.stdout + result.stderr
    if "--offline" in output and ("unrecognized" in output or "unknown" in output.lower()):
        pytest.skip("systemd-analyze too old for --offline (needs systemd >= 250)")
    assert result.returncode == 0, output
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, output
    score = float(match.group(1))
    print(f"systemd-analyze security exposure: {score}")
    assert score <= MAX_EXPOSURE, output
    # Same check through systemd's own threshold (exposure x 10).
    threshold = run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager",
         f"--threshold={int(MAX_EXPOSURE * 10)}", str(UNIT)]
    )
    assert threshold.returncode == 0, threshold.stdout + threshold.stderr


def test_documentation_path_is_installed():
    # `meson install` puts docs/operations.md where the unit's Documentation= points.
    (doc,) = unit_directives()["Documentation"]
    assert doc.startswith("file:")
    binary = find_binary()
    if binary is None or not (binary.parent / "meson-info").is_dir() or not shutil.which("meson"):
        pytest.skip("needs the meson build directory of the binary")
    build = binary.parent
    installed = json.loads(subprocess.run(["meson", "introspect", "--installed", str(build)], capture_output=True,
                                          text=True, check=True, timeout=60).stdout)
    prefix = json.loads(subprocess.run(["meson", "introspect", "--buildoptions", str(build)], capture_output=True,
                                       text=True, check=True, timeout=60).stdout)
    prefix = next(o["value"] for o in prefix if o["name"] == "prefix")
    target = {Path(src).resolve(): dst for src, dst in installed.items()}
    operations = (REPO / "docs" / "operations.md").resolve()
    assert operations in target, installed
    # The unit's path assumes the default prefix, /usr/local.
    assert target[operations] == doc[len("file:"):].replace("/usr/local", prefix, 1)
