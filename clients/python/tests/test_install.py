"""`pip install ./clients/python` in a fresh venv with no index: the build
backend is in the tree (_build/backend.py), so nothing is downloaded."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.dirname(HERE)


def run(args, **kwargs):
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_CACHE_DIR="1",
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env, stdin=subprocess.DEVNULL,
                            **kwargs)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


def test_installs_offline_in_a_fresh_venv(tmp_path):
    try:
        import ensurepip  # noqa: F401
    except ImportError:
        pytest.fail("python3-venv is missing (tools/install-deps.sh test installs it)")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "--no-index", PACKAGE])
    out = run([python, "-c", "import kvcache, sys; print(kvcache.__version__, kvcache.__file__); "
                             "print(kvcache.Ring([1, 2, 3]).owner('key:1'))"], cwd=str(tmp_path))
    version, path = out.split("\n")[0].split()
    assert version == "0.1.0" and path.startswith(str(venv)), out
    from kvcache import Ring
    assert out.split("\n")[1] == str(Ring([1, 2, 3]).owner("key:1"))
    assert run([str(venv / "bin" / "kvcache-key-owner"), "--ids", "1,2,3", "key:1"]) == \
        f"{Ring([1, 2, 3]).owner('key:1')} key:1\n"
    # the build left nothing in the source tree
    assert not os.path.exists(os.path.join(PACKAGE, "build"))
