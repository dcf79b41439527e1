"""One writer for the results tables: the same rows as Markdown, CSV and LaTeX."""

from __future__ import annotations

from pathlib import Path


def write_table(out_dir, stem: str, columns: list[str], rows: list[list], formats: list[str]) -> list[Path]:
    """Write ``stem``.md/.csv/.tex. ``formats[i]`` formats column i for md and tex (e.g. "{:.1f}%");
    the CSV keeps full precision. The first column is text."""
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    csv = [",".join(columns)]
    tex = [r"\begin{tabular}{l" + "r" * (len(columns) - 1) + "}", r"\toprule",
           " & ".join(c.replace("%", r"\%") for c in columns) + r" \\", r"\midrule"]
    for row in rows:
        cells = [fmt.format(v) for fmt, v in zip(formats, row)]
        md.append("| " + " | ".join(cells) + " |")
        csv.append(",".join([f"\"{row[0]}\"", *(f"{v:.6g}" if isinstance(v, float) else str(v)
                                                 for v in row[1:])]))
        tex.append(" & ".join(c.replace("%", "") for c in cells) + r" \\")
    tex += [r"\bottomrule", r"\end{tabular}"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "tex")]
    for path, lines in zip(paths, (md, csv, tex)):
        path.write_text("\n".join(lines) + "\n")
    return paths
