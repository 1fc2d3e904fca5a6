"""The documentation's examples, run as a new user would run them.

The README's "Using it" block is executed line by line with curl against a
fresh server (with --snapshot-path, as its last line says), and every output
it shows in a `# {...}` comment must be what the server answered. docs/api.md's
content type for /metrics must be the one the server sends.
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
