"""The project stands on its own: README, docs/ and code cite only what is in the repository.

Fails on a reference that points outside the repository (a link or path into a sibling folder,
a citation of an outside specification document, an absolute path on a developer's machine),
on a relative link in README.md or docs/ to a file that does not exist, and on development
history (issue numbers) in the README, the docs and the package docstrings.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SELF = Path(__file__).resolve()

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
CODE_DIRS = ("ldfa", "theory", "sim", "bridge", "figures", "bench", "tests", "paper", "docs", ".ci")
CODE = sorted(p for d in CODE_DIRS for p in (ROOT / d).rglob("*")
              if p.suffix in {".py", ".tex", ".bib", ".yml", ".toml", ".md"} and p.is_file()
              and p.resolve() != SELF and "generated" not in p.parts)
CODE += [ROOT / name for name in ("Makefile", "pyproject.toml", "mkdocs.yml", ".ci/run")
         if (ROOT / name).exists()]

# built from pieces so that this file does not match itself
OUTSIDE = [
    (re.compile(r"\.\./" + "shared"), "a path into the sibling folder ../shared"),
    # (a test asserting that a docstring does not cite it is no citation)
    (re.compile(r"\b" + "SP" + r"EC\b(?!\" not in)"),
     "a citation of an outside specification; cite a docs/ page"),
    (re.compile(r"(?<![\w.])/(?:work|root|home|Users)/\w"), "an absolute path on a developer's machine"),
    (re.compile(r"\]\((?:/|file:)"), "an absolute link"),
]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
ISSUE = re.compile(r"\b[Ii]ssue\s*#?\d+|\bin this round\b")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", DOCS + CODE, ids=_rel)
def test_no_reference_outside_the_repository(path):
    text = path.read_text(encoding="utf-8", errors="replace")
    problems = [f"{_rel(path)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r} is {why}"
                for pattern, why in OUTSIDE for m in pattern.finditer(text)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=_rel)
def test_relative_links_point_to_files_in_the_repository(path):
    broken = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, or an anchor on the same page
        file = (path.parent / target.split("#", 1)[0]).resolve()
        if not file.is_relative_to(ROOT):
            broken.append(f"{target} leaves the repository")
        elif not file.exists():
            broken.append(f"{target} does not exist")
    assert not broken, f"{_rel(path)}: " + "; ".join(broken)


def test_readme_is_short_and_names_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "make figures" in text and "make test" in text


@pytest.mark.parametrize("path", DOCS + sorted(ROOT.glob("*/__init__.py")), ids=_rel)
def test_no_development_history_in_product_text(path):
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        text = text.split('"""')[1] if text.count('"""') >= 2 else ""  # the module docstring
    assert not ISSUE.findall(text), f"{_rel(path)}: {ISSUE.findall(text)}"


def test_every_docs_page_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = [_rel(p).removeprefix("docs/") for p in (ROOT / "docs").rglob("*.md")]
    missing = [p for p in pages if p not in nav]
    assert not missing, f"docs pages missing from mkdocs.yml's nav: {missing}"


def test_the_linter_would_catch_a_reference_outside():
    """The patterns above do fire (so that a passing test means something)."""
    samples = ["see [spec](../" + "shared/x.md)", "as in " + "SP" + "EC section 3", "/" + "work/main/x.py",
               "[a](/etc/passwd)"]
    for sample in samples:
        assert any(p.search(sample) for p, _ in OUTSIDE), sample
    assert not any(p.search("SPECTRUM = (3, 2, 1); /usr/share/datasets") for p, _ in OUTSIDE)


def test_readme_lists_every_figure():
    from ldfa.figures.make import FIGURES

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [name for name in FIGURES if f"`{name}`" not in text]
    assert not missing, f"README's figure table lacks {missing}"
