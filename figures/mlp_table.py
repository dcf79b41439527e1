"""Table: Fashion-MNIST test accuracy of an MLP 784-256-256-10 under every rule."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

from ldfa.sim.train import TrainConfig, train

ROWS = [
    ("bp", dict(rule="bp")),
    ("fa", dict(rule="fa")),
    ("dfa", dict(rule="dfa")),
    ("kp", dict(rule="kp")),
    ("wm", dict(rule="wm")),
    ("sign (uSF)", dict(rule="sign")),
    ("ld r=10, oja P, kp Q (raf)", dict(rule="ld", rank=10, p_rule="oja", q_rule="kp")),
    ("ld r=10, fixed P, fixed Q", dict(rule="ld", rank=10, p_rule="fixed", q_rule="fixed")),
    ("ldfa r=10 (lowrank, svd init)", dict(rule="ldfa", rank=10)),
    ("ldfa-local r=10 (kp, svd init)", dict(rule="ldfa-local", rank=10)),
]
SETTINGS = dict(model="mlp", hidden=(256, 256), data="fashion-mnist", epochs=2, batch_size=128,
                optimizer="adam", lr=1e-3, model_options={"activation": "tanh"})
SEEDS = {"quick": [0], "full": [0, 1, 2]}


def run(preset: str = "quick", rows=ROWS) -> list[dict]:
    """Train every row for each seed of the preset; mean and spread of the test accuracy."""
    out = []
    for label, kw in rows:
        accs = [train(TrainConfig(**SETTINGS, **kw, seed=s), progress=False)["test_acc"]
                for s in SEEDS[preset]]
        out.append({"rule": label, "mean": statistics.mean(accs), "min": min(accs), "max": max(accs),
                    "seeds": len(accs)})
    return out


def markdown(results: list[dict]) -> str:
    lines = ["| rule | test accuracy (mean) | min | max | seeds |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rule']} | {100 * r['mean']:.1f}% | {100 * r['min']:.1f}% | "
                     f"{100 * r['max']:.1f}% | {r['seeds']} |")
    return "\n".join(lines) + "\n"


def fashion_mlp_table(preset: str, out_dir) -> list[Path]:
    """Writes mlp_fashion_table.md and .csv."""
    results = run(preset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "mlp_fashion_table.md"
    md.write_text(markdown(results))
    path = out_dir / "mlp_fashion_table.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)
    return [md, path]
