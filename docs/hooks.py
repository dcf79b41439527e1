"""mkdocs hook: lays the ldfa package out on disk for the API reference.

pyproject.toml mounts top-level folders inside the package (theory/ -> ldfa.theory, sim/ ->
ldfa.sim, ...), which the reference's source reader (griffe) cannot follow. Before the build this
hook mirrors the installed layout with symbolic links under build/api-src/ldfa; mkdocs.yml
points mkdocstrings there.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "build" / "api-src"


def package_dirs(pyproject: str) -> dict[str, str]:
    """The package-dir table of pyproject.toml: package name -> folder."""
    line = next(line for line in pyproject.splitlines() if line.strip().startswith("package-dir"))
    return dict(re.findall(r'"([\w.]+)"\s*=\s*"([^"]+)"', line))


@event_priority(100)  # before mkdocstrings reads its paths
def on_config(config):
    mapping = package_dirs((ROOT / "pyproject.toml").read_text())
    shutil.rmtree(SOURCE, ignore_errors=True)
    package = SOURCE / "ldfa"
    package.mkdir(parents=True)
    for path in (ROOT / mapping["ldfa"]).glob("*.py"):
        (package / path.name).symlink_to(path)
    for name, folder in mapping.items():
        if name != "ldfa":
            (package / name.split(".", 1)[1]).symlink_to(ROOT / folder, target_is_directory=True)
    return config
