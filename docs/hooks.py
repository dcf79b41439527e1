"""mkdocs hooks for the API reference.

pyproject.toml mounts top-level folders inside the package (theory/ -> ldfa.theory, sim/ ->
ldfa.sim, ...), which the reference's source reader (griffe) cannot follow. Before the build,
``on_config`` mirrors the installed layout with symbolic links under build/api-src/ldfa (where
mkdocs.yml points mkdocstrings), and ``on_files`` writes one reference page per subpackage
(api/theory.md, ...) listing every module it has, so a new module is documented without an edit
here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "build" / "api-src"

# subpackage -> (one-line description, modules listed first; the others follow by name)
PAGES = {
    "theory": ("Learning dynamics of deep linear networks under every feedback rule (no torch). "
               "Background: [Linear theory](../theory.md).",
               ["rules", "derive", "modes", "analysis", "config", "integrate", "trajectory", "closed_form",
                "predictions"]),
    "sim": ("Torch training with every feedback rule. Background: [Simulation](../simulation.md).",
            ["layers", "feedback", "ops", "models", "data", "train"]),
    "bridge": ("Theory and simulation of the same linear network, side by side. "
               "Background: [Verification](../verify.md).", ["linear"]),
    "figures": ("Experiments, figures, `ldfa verify`, the results store and the paper's generated inputs.",
                ["make", "verify"]),
}


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


def reference_page(name: str, intro: str, first: list[str]) -> str:
    """The markdown of one subpackage's reference page: its docstring, then every module."""
    found = sorted(p.stem for p in (SOURCE / "ldfa" / name).glob("*.py") if not p.stem.startswith("_"))
    modules = [m for m in first if m in found] + [m for m in found if m not in first]
    parts = [f"# ldfa.{name}\n\n{intro}\n\n::: ldfa.{name}\n    options:\n      members: false\n"]
    parts += [f"::: ldfa.{name}.{module}\n" for module in modules]
    return "\n".join(parts)


def on_files(files, config):
    for name, (intro, first) in PAGES.items():
        if (SOURCE / "ldfa" / name).is_dir():
            files.append(File.generated(config, f"api/{name}.md", content=reference_page(name, intro, first)))
    return files
