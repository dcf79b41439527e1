"""The set-up of `make` respects the user's environment (docs/install.md).

What is demonstrated, and how:

* `make` installs into a project virtual environment (`.venv`, or `VENV=...`), created with
  ``--system-site-packages``, and every command runs through that environment's python; the CI pin
  (constraints.txt) is not read on the user's path. Checked on the commands `make -n` prints.
* An installed torch is kept. The Makefile's own recipes create a throw-away venv; into it goes a
  stand-in ``torch`` distribution with version ``2.99.0+cu999`` (a dist-info with METADATA and a
  ``torch/__init__.py``), playing a user's CUDA build that no index offers. Then the Makefile's
  install step runs with ``--dry-run --report``: pip resolves ldfa's requirements against what it
  sees and reports what it would install. The check passes only if torch is not on that list.
  As a control, resolving pyproject's torch requirement with the CI pin (``-c constraints.txt``)
  in the same venv must list torch 2.13.0 (the CPU build on CI's disk) for installation, so the
  check can fail: the stand-in is seen, and a pin would replace it.
  This machine's own pip configuration caps torch (a global constraint file that a user's machine
  does not have), so the first resolution runs with ``PIP_CONSTRAINT=/dev/null``.
Nothing is installed: pip only resolves.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _env(**extra) -> dict:
    """The environment without what a calling make (e.g. `make test PIP_FLAGS=...` in CI) passes on."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PIP_FLAGS", "VENV", "PYTHON"}}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def _make(*args, env=None, check=True):
    return subprocess.run(["make", "-C", str(ROOT), "--no-print-directory", *args], env=env or _env(),
                          capture_output=True, text=True, check=check, timeout=600)


def test_make_runs_everything_through_the_project_venv():
    printed = _make("-n", "-B", "figures", "test", "bench", "docs", "paper").stdout
    lines = [line.strip() for line in printed.splitlines()]
    assert lines[0].startswith("python3 -m venv --system-site-packages .venv ")
    python_calls = [line for line in lines if "python" in line.split(" ")[0]]
    assert len(python_calls) >= 8, printed  # venv, 2 installs, figures, ruff, pytest, bench, docs, paper
    for call in python_calls:
        assert call.startswith(".venv/bin/python ") or call.startswith("python3 -m venv "), call
    assert "pip install" in printed and "constraints.txt" not in printed


def test_ci_passes_the_torch_pin():
    run = (ROOT / ".ci" / "run").read_text()
    assert 'PIP_FLAGS="-c constraints.txt"' in run
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()


def _stand_in_torch(venv: Path, version: str) -> None:
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    site = Path(purelib)
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text(f'__version__ = "{version}"\n')
    info = site / f"torch-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
    (info / "top_level.txt").write_text("torch\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")


def _would_install(report: Path) -> dict:
    return {item["metadata"]["name"].lower(): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]}


def test_an_installed_torch_is_kept(tmp_path):
    venv = tmp_path / "venv"
    base = _env()
    # the Makefile's own recipe creates the venv (with --system-site-packages)
    _make(f"VENV={venv}", f"PYTHON={sys.executable}", str(venv / "bin" / "python"), env=base)
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg
    _stand_in_torch(venv, "2.99.0+cu999")
    probe = "import importlib.metadata as m, torch; print(m.version('torch'), torch.__version__)"
    seen = subprocess.run([str(venv / "bin" / "python"), "-c", probe],
                          capture_output=True, text=True, check=True).stdout.split()
    assert seen == ["2.99.0+cu999", "2.99.0+cu999"]

    report = tmp_path / "user.json"
    _make(f"VENV={venv}", "install", f"PIP_FLAGS=--dry-run --report {report}",
          env={**base, "PIP_CONSTRAINT": "/dev/null"})
    user = _would_install(report)
    assert "ldfa" in user
    assert "torch" not in user, f"make install would replace the installed torch: {user}"

    torch_req = re.search(r'"(torch[<>=!~][^"]*)"', (ROOT / "pyproject.toml").read_text()).group(1)
    report = tmp_path / "ci.json"
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--dry-run",
                    "--report", str(report), "-c", str(ROOT / "constraints.txt"), torch_req],
                   env={**base, "PIP_CONSTRAINT": "/dev/null"}, capture_output=True, check=True, timeout=600)
    pinned = _would_install(report)
    assert pinned.get("torch", "").startswith("2.13.0"), pinned
