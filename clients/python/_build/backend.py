"""A PEP 517 build backend with no dependency: builds the kvcache wheel (and an
sdist, and an editable wheel) with the standard library alone, so that
`pip install ./clients/python` needs no network. It reads the few fields it
needs from pyproject.toml with tomllib (Python 3.11) or a line parser."""

import base64
import hashlib
import io
import os
import re
import tarfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "kvcache"


def _project():
    text = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    try:
        import tomllib
        data = tomllib.loads(text)
        project = data["project"]
        return project["name"], project["version"], project["description"], project.get("scripts", {})
    except ImportError:
        def field(name):
            return re.search(rf'^{name} = "([^"]*)"', text, re.M).group(1)
        scripts = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"$', text.split("[project.scripts]", 1)[-1], re.M))
        return field("name"), field("version"), field("description"), scripts


def _metadata():
    name, version, description, _ = _project()
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    return (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: {description}\n"
            f"License: MIT\nRequires-Python: >=3.9\nDescription-Content-Type: text/markdown\n\n{readme}")


def _dist_info():
    name, version, _, _ = _project()
    return f"{name}-{version}.dist-info"


def _sources():
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, PACKAGE)):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(filenames):
            if f.endswith((".py", ".json", ".typed")):
                full = os.path.join(dirpath, f)
                yield full, os.path.relpath(full, ROOT).replace(os.sep, "/")


def _wheel(wheel_directory, files):
    name, version, _, scripts = _project()
    dist_info = _dist_info()
    files = list(files) + [
        (f"{dist_info}/METADATA", _metadata().encode()),
        (f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: kvcache-backend\nRoot-Is-Purelib: true\n"
                               b"Tag: py3-none-any\n"),
    ]
    if scripts:
        lines = "".join(f"{k} = {v}\n" for k, v in scripts.items())
        files.append((f"{dist_info}/entry_points.txt", f"[console_scripts]\n{lines}".encode()))
    filename = f"{name}-{version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w", zipfile.ZIP_DEFLATED) as z:
        for arcname, data in files:
            z.writestr(zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0)), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arcname},sha256={digest},{len(data)}")
        record.append(f"{dist_info}/RECORD,,")
        z.writestr(zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=(2020, 1, 1, 0, 0, 0)),
                   "\n".join(record) + "\n")
    return filename


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _wheel(wheel_directory, ((arc, open(full, "rb").read()) for full, arc in _sources()))


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _wheel(wheel_directory, [(f"{PACKAGE}_editable.pth", (ROOT + "\n").encode())])


def build_sdist(sdist_directory, config_settings=None):
    name, version, _, _ = _project()
    base = f"{name}-{version}"
    filename = f"{base}.tar.gz"
    with tarfile.open(os.path.join(sdist_directory, filename), "w:gz") as tar:
        for rel in ["pyproject.toml", "README.md", "_build/backend.py"] + [arc for _, arc in _sources()]:
            tar.add(os.path.join(ROOT, rel), f"{base}/{rel}")
        info = tarfile.TarInfo(f"{base}/PKG-INFO")
        data = _metadata().encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return filename
