"""One writer for the results tables: the same rows as Markdown, CSV and LaTeX."""

from __future__ import annotations

import csv
import io
from pathlib import Path

_TEX = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$"}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def write_table(out_dir, stem: str, columns: list[str], rows: list[list], formats: list[str]) -> list[Path]:
    """Write ``stem``.md/.csv/.tex. ``formats[i]`` formats column i for Markdown and LaTeX (e.g.
    "{:.1f}%", "{:,}"; a trailing % is dropped in LaTeX, where the header names the unit); the
    CSV (csv module quoting) keeps the raw values at full precision."""
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    tex = [r"\begin{tabular}{l" + "r" * (len(columns) - 1) + "}", r"\toprule",
           " & ".join(_tex(c) for c in columns) + r" \\", r"\midrule"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = [fmt.format(v) for fmt, v in zip(formats, row)]
        md.append("| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |")
        tex.append(" & ".join(_tex(c.removesuffix("%")) for c in cells) + r" \\")
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
    tex += [r"\bottomrule", r"\end{tabular}"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "tex")]
    for path, text in zip(paths, ("\n".join(md) + "\n", buf.getvalue(), "\n".join(tex) + "\n")):
        path.write_text(text)
    return paths
