"""The documentation's examples, run as a new user would run them.

The README's "Using it" block is executed line by line with curl against a
fresh server (with --snapshot-path, as its last line says), and every output
it shows in a `# {...}` comment must be what the server answered. docs/api.md's
content type for /metrics must be the one the server sends. docs/operations.md's
examples that run on one machine run as written: the TLS test certificate
and its curl, the backup script (with stand-ins for aws and logger), the
upgrade checks, promtool and systemd-analyze.
"""

import re
import shutil
import subprocess

import pytest
import requests

from helpers import REPO

README = REPO / "README.md"
API = REPO / "docs" / "api.md"
CURL = shutil.which("curl")


def readme_usage_block():
    text = README.read_text()
    section = text[text.index("## Using it"):]
    return section[section.index("```sh\n") + 6:section.index("\n```", section.index("```sh"))]


@pytest.mark.skipif(CURL is None, reason="curl not installed")
def test_readme_usage_block_prints_what_it_shows(start_server, tmp_path):
    srv = start_server("--snapshot-path", str(tmp_path / "readme.snap"))
    lines = readme_usage_block().splitlines()
    checked = 0
    for i, line in enumerate(lines):
        if not line.startswith("curl "):
            continue
        command = line.split("  #")[0].split(" # ")[0].replace("localhost:7171", f"127.0.0.1:{srv.port}")
        out = subprocess.run(["bash", "-c", command.replace("curl ", "curl -s ", 1)], capture_output=True,
                             text=True, timeout=10).stdout
        shown = lines[i + 1] if i + 1 < len(lines) else ""
        if not shown.startswith("# {"):
            continue
        expected = shown[2:].split("   ")[0].strip()
        # the only value that depends on the machine: how long the snapshot took
        pattern = re.escape(expected).replace(re.escape('"seconds":0.001'), r'"seconds":[0-9.e-]+')
        assert re.fullmatch(pattern, out.strip()), f"README: {line}\n  shows  {expected}\n  prints {out.strip()}"
        checked += 1
    assert checked >= 8, f"only {checked} shown outputs found in the README block"


def test_api_md_names_the_metrics_content_type(server):
    sent = requests.get(server.url + "/metrics", timeout=5).headers["Content-Type"]
    row = next(line for line in API.read_text().splitlines() if line.startswith("| `GET /metrics`"))
    assert f"`{sent}`" in row, f"server sends {sent!r}; api.md says: {row}"


# --- docs/operations.md: the examples that can run on one machine, as written
# (paths, the port and the binary substituted; aws and logger stood in for).

OPERATIONS = REPO / "docs" / "operations.md"


def operations_block(marker):
    """The fenced code block of operations.md that contains `marker`."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```$", OPERATIONS.read_text(), flags=re.S | re.M)
    found = [block for block in blocks if marker in block]
    assert found, f"no code block of operations.md holds {marker!r}"
    return found[0]


def logical_lines(block):
    """The block's commands, continuation lines joined."""
    return block.replace("\\\n", " ").splitlines()


def fake_bin(directory, port):
    """A PATH directory where `kvcache` is the binary under test."""
    from helpers import KVCACHE_BIN
    directory.mkdir(exist_ok=True)
    wrapper = directory / "kvcache"
    wrapper.write_text(f'#!/bin/sh\nexec "{KVCACHE_BIN}" "$@"\n')
    wrapper.chmod(0o755)
    return directory


@pytest.mark.skipif(CURL is None or shutil.which("openssl") is None, reason="curl or openssl not installed")
def test_operations_tls_example_works(tmp_path):
    import os
    from helpers import free_port, wait_healthy
    port = free_port()
    env = dict(os.environ, KVCACHE_PORT=str(port), PATH=f"{fake_bin(tmp_path / 'bin', port)}:{os.environ['PATH']}")
    server = None
    try:
        checked = 0
        for line in logical_lines(operations_block("openssl req -x509")):
            command, _, shown = line.partition("  # ")
            command = command.replace("localhost:7171", f"localhost:{port}").strip()
            if command.endswith("&"):
                server = subprocess.Popen(["bash", "-c", command[:-1]], cwd=tmp_path, env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                assert wait_healthy(port, server, tls={"cert": str(tmp_path / "cert.pem")}), command
                continue
            p = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=60)
            assert p.returncode == 0, f"operations.md: {command}\n{p.stdout}{p.stderr}"
            if shown.strip():
                assert p.stdout.strip() == shown.strip(), f"operations.md: {command}\n  shows {shown}\n  prints {p.stdout}"
                checked += 1
        assert checked == 2 and server is not None
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


@pytest.mark.skipif(CURL is None, reason="curl not installed")
def test_operations_backup_script_uploads_and_alerts_on_failure(start_server, tmp_path):
    import os
    token = "backup-token-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "tokens").write_text(token + "\n")
    (tmp_path / "tokens").chmod(0o600)
    snapshot = tmp_path / "cache.snap"
    srv = start_server("--snapshot-path", str(snapshot), "--auth-token-file", str(tmp_path / "tokens"))
    requests.post(f"{srv.url}/put", json={"key": "k", "value": "v"}, headers={"Authorization": f"Bearer {token}"},
                  timeout=5)
    script = (operations_block("kvcache-backup: a fresh snapshot")
              .replace("/etc/kvcache/token", str(tmp_path / "token"))
              .replace("/var/lib/kvcache/cache.snap", str(snapshot))
              .replace("http://localhost:7171", srv.url))
    (tmp_path / "backup.sh").write_text(script)
    # Stand-ins: `aws s3 cp FILE s3://BUCKET/KEY` copies into ./bucket unless AWS_FAILS; logger appends to ./log.
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "aws").write_text('#!/bin/sh\n[ -n "$AWS_FAILS" ] && exit 1\nmkdir -p bucket\n'
                               'cp "$3" "bucket/$(basename "$4")"\n')
    (stubs / "logger").write_text('#!/bin/sh\necho "$@" >> log\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}")

    def backup(**extra):
        return subprocess.run(["sh", "backup.sh"], cwd=tmp_path, env=dict(env, **extra), capture_output=True,
                              text=True, timeout=60)

    p = backup()
    assert p.returncode == 0, p.stderr
    (uploaded,) = (tmp_path / "bucket").iterdir()
    assert uploaded.read_bytes() == snapshot.read_bytes()
    assert not (tmp_path / "log").exists()
    # The upload fails: logged at err, said on stderr (cron mails it), exit 1.
    p = backup(AWS_FAILS="1")
    assert p.returncode == 1 and "upload of" in p.stderr
    assert "-p user.err -t kvcache-backup upload of" in (tmp_path / "log").read_text()
    # A wrong token: the snapshot is refused (401), and that alerts too.
    (tmp_path / "token").write_text("wrong-token-0123456789\n")
    p = backup()
    assert p.returncode == 1 and "POST /snapshot failed" in p.stderr
    assert "POST /snapshot failed: no backup taken" in (tmp_path / "log").read_text()


@pytest.mark.parametrize("marker,tool", [("promtool check rules", "promtool"),
                                         ("systemd-analyze verify", "systemd-analyze")])
def test_operations_repository_commands_run_as_written(marker, tool):
    import os
    from helpers import KVCACHE_BIN
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    if tool == "systemd-analyze" and not os.path.isdir("/usr/lib/systemd/system"):
        pytest.skip("no /usr/lib/systemd/system to verify against")
    block = operations_block(marker).replace("build/kvcache", KVCACHE_BIN)
    p = subprocess.run(["bash", "-ec", block], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"operations.md:\n{block}\n{p.stdout}{p.stderr}"


def test_operations_upgrade_checks_run(server):
    import os
    from helpers import KVCACHE_BIN
    lines = [line.split("  #")[0].strip() for line in logical_lines(operations_block("kvcache.new --help"))]
    runnable = [line for line in lines if not line.startswith("sudo ")]
    assert len(runnable) == 2, runnable
    env = dict(os.environ, KVCACHE_PORT=str(server.port))
    outputs = []
    for line in runnable:
        command = line.replace("/usr/local/bin/kvcache.new", KVCACHE_BIN).replace("/usr/local/bin/kvcache", KVCACHE_BIN)
        p = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, f"operations.md: {line}\n{p.stderr}"
        outputs.append(p.stdout.strip())
    assert outputs == ["", "healthy"]
