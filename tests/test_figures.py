"""`ldfa figures` end to end on the tiny preset: every figure function writes its files (no
legend over data), tables are read from the results store, two empty stores filled with
different worker counts give identical numbers, and the store survives corrupt entries."""

import csv
import json

from conftest import needs_fashion_mnist

from ldfa.figures import make, style
from ldfa.figures.store import Store, _canonical, _digest


@needs_fashion_mnist
def test_every_figure_on_tiny_preset_and_cache(tmp_path):
    store = Store(tmp_path / "store")
    files = make.run("tiny", out=tmp_path / "out", store=store)
    for name in make.FIGURES:
        mine = [f for f in files if f.stem.startswith(name.split("_fashion")[0])]
        assert mine, name
    for f in files:
        assert f.stat().st_size > 100, f
    pngs = [f for f in files if f.suffix == ".png"]
    assert len(pngs) >= 5 and all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in pngs)
    computed = store.misses
    assert computed > 0
    figures = [f.stem for f in pngs]
    assert all(style.LAYOUT[name] == [] for name in figures), {n: style.LAYOUT[n] for n in figures}
    assert all((tmp_path / "out" / f"{name}.json").exists() for name in figures)
    # a second run recomputes nothing
    again = Store(tmp_path / "store")
    make.run("tiny", only=["mlp_accuracy_vs_rank", "mlp_fashion_table"], out=tmp_path / "out", store=again)
    assert again.misses == 0 and again.hits > 0
    # an empty store filled by one process gives the same numbers as the two workers did
    fresh = Store(tmp_path / "fresh")
    make.run("tiny", only=["mlp_fashion_table", "alignment"], out=tmp_path / "fresh_out", store=fresh,
             workers=1)
    assert fresh.misses > 0
    for name in ("mlp_fashion_table.md", "mlp_fashion_table.csv", "alignment.json"):
        assert (tmp_path / "fresh_out" / name).read_text() == (tmp_path / "out" / name).read_text(), name


@needs_fashion_mnist
def test_table_numbers_come_from_the_store(tmp_path):
    store = Store(tmp_path / "store")
    make.run("tiny", only=["mlp_fashion_table"], out=tmp_path / "out", store=store)
    # overwrite every stored accuracy with a sentinel; the regenerated table must show it
    for i, path in enumerate(sorted((tmp_path / "store").glob("*.json"))):
        entry = json.loads(path.read_text())
        entry["result"]["test_acc"] = 0.999 - i / 1000  # 99.9%, 99.8%, ...: no 4-step run gets there
        entry.pop("sha256")
        entry["sha256"] = _digest(_canonical(entry))  # signed again: a deliberate, valid entry
        path.write_text(json.dumps(entry))
    n = len(list((tmp_path / "store").glob("*.json")))
    sentinels = {f"{100 * (0.999 - i / 1000):.1f}%" for i in range(n)}
    again = Store(tmp_path / "store")
    make.run("tiny", only=["mlp_fashion_table"], out=tmp_path / "out", store=again)
    assert again.misses == 0
    rows = [line for line in (tmp_path / "out" / "mlp_fashion_table.md").read_text().splitlines()[2:]]
    assert rows
    for row in rows:
        mean = row.split("|")[2].strip()
        assert mean in sentinels, row


def test_store_detects_corrupt_entries(tmp_path):
    store = Store(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"value": 1.0}, {"w": [[1.0, 2.0]]}

    first = store.cached("demo", {"a": 1}, compute)
    assert first["result"] == {"value": 1.0} and len(calls) == 1
    assert store.cached("demo", {"a": 1}, compute)["result"]["value"] == 1.0 and len(calls) == 1
    key = store.key("demo", {"a": 1})
    # truncate the JSON: detected, recomputed, never returned
    path = store.path(key)
    path.write_text(path.read_text()[:20])
    assert store.cached("demo", {"a": 1}, compute)["result"]["value"] == 1.0 and len(calls) == 2
    assert store.corrupt and key in store.corrupt[0]
    # corrupt the arrays: checksum mismatch, recomputed
    npz = tmp_path / f"{key}.npz"
    npz.write_bytes(npz.read_bytes()[:-10] + b"0123456789")
    fresh = Store(tmp_path)
    assert fresh.cached("demo", {"a": 1}, compute)["arrays"]["w"].tolist() == [[1.0, 2.0]]
    assert len(calls) == 3 and fresh.corrupt
    # a different config is a different key; no temporary files are left behind
    assert store.key("demo", {"a": 2}) != key
    assert not list(tmp_path.glob("*.tmp"))


def test_diverged_figure_run_is_stored_as_failed(tmp_path, monkeypatch):
    from ldfa.figures import mlp_figs
    from ldfa.sim.train import TrainingDiverged

    def diverge(*args, **kwargs):
        raise TrainingDiverged("loss became nan at step 3")

    monkeypatch.setattr(mlp_figs, "train", diverge)
    store = Store(tmp_path)
    entry = mlp_figs.run_cached(store, "tiny", 0, rule="bp")
    assert entry["result"]["status"] == "failed"
    again = Store(tmp_path)
    assert mlp_figs.run_cached(again, "tiny", 0, rule="bp")["result"]["status"] == "failed"
    assert again.hits == 1 and again.misses == 0  # not retried


@needs_fashion_mnist
def test_transfer_table_reads_the_store_and_counts_tuned_parameters(tmp_path):
    store = Store(tmp_path / "store")
    make.run("tiny", only=["transfer_table"], out=tmp_path / "out", store=store)
    text = (tmp_path / "out" / "transfer_table.md").read_text()
    rows = text.splitlines()[2:]
    assert len(rows) == 5
    with open(tmp_path / "out" / "transfer_table.csv", newline="") as f:
        table = list(csv.reader(f))
    assert len(table) == 6 and all(len(r) == 6 for r in table)  # "20,869" stays one quoted field

    def tuned(name):
        return int(next(r for r in rows if name in r).split("|")[5].strip().replace(",", ""))

    assert tuned("linear probe") < tuned("TOAST") < tuned("fine-tuning") == tuned("from scratch")
    again = Store(tmp_path / "store")
    make.run("tiny", only=["transfer_table"], out=tmp_path / "out2", store=again)
    assert again.misses == 0
    assert (tmp_path / "out2" / "transfer_table.md").read_text() == text


def test_divergence_is_judged_on_the_test_loss_not_a_noisy_last_batch():
    from ldfa.figures.mlp_figs import diverged

    healthy = {"status": "done", "test_loss": 0.45, "history": [{"loss": 0.40}, {"loss": 0.71}]}
    blown_up = {"status": "done", "test_loss": 10.1, "history": [{"loss": 0.87}, {"loss": 9.0}]}
    nan_logged = {"status": "done", "test_loss": 0.5, "history": [{"loss": float("nan")}]}
    assert not diverged(healthy)  # last batch 1.8x the first: noise, not a blow-up
    assert diverged(blown_up) and diverged(nan_logged)
    assert diverged({"status": "failed", "test_loss": float("nan"), "history": []})
    assert not diverged({"status": "done", "test_loss": 3.0, "history": []}, classes=100)  # ln 100 = 4.6
