"""The results store: keys record everything that changes a number, every entry is checked
(checksum of the whole content, schema, key) and a bad one is reported and recomputed."""

import json

import pytest
import torch

from ldfa.errors import ConfigError
from ldfa.figures import runner
from ldfa.figures.store import Store


def _value(config, store):
    return {"value": float(config["a"]) * 2, "threads": torch.get_num_threads(),
            "draw": float(torch.rand(1))}, {"w": [[1.0, 2.0]]}


def _job(a=1):
    return runner.Job("demo", {"a": a}, _value, fields=("value",))


def test_key_records_threads_and_torch_version(tmp_path):
    one, two = Store(tmp_path, threads=1), Store(tmp_path, threads=2)
    assert one.key("demo", {"a": 1}) != two.key("demo", {"a": 1})
    assert one.env({})["threads"] == 1 and one.env({})["torch"] == torch.__version__
    assert one.env({"device": "cuda"})["device"] == "cuda"
    # the computation runs with the store's thread count, whatever the process uses
    torch.set_num_threads(1)
    assert two.run(_job())["result"]["threads"] == 2
    assert torch.get_num_threads() == 1  # restored
    assert one.run(_job())["result"]["threads"] == 1


def test_each_run_seeds_itself(tmp_path):
    torch.manual_seed(123)
    first = Store(tmp_path / "a").run(_job())["result"]["draw"]
    torch.rand(100)  # whatever ran before in the process
    second = Store(tmp_path / "b").run(_job())["result"]["draw"]
    assert first == second


@pytest.mark.parametrize("content", ["null", '{"result": 5}', "[1, 2]", '{"kind": "demo"}', "", "{not json"])
def test_bad_entries_are_reported_in_one_line_and_recomputed(tmp_path, content):
    lines = []
    store = Store(tmp_path, report=lines.append)
    job = _job()
    store.run(job)
    key = store.key(job.kind, job.config)
    store.path(key).write_text(content)
    fresh = Store(tmp_path, report=lines.append)
    entry = fresh.run(job)
    assert entry["result"]["value"] == 2.0 and fresh.misses == 1
    assert len(lines) == 1 and "\n" not in lines[0] and key in lines[0] and "recomputing" in lines[0]
    assert json.loads(store.path(key).read_text())["result"]["value"] == 2.0  # repaired on disk


def test_an_edited_value_fails_the_checksum(tmp_path):
    store = Store(tmp_path)
    job = _job()
    store.run(job)
    path = store.path(store.key(job.kind, job.config))
    entry = json.loads(path.read_text())
    entry["result"]["value"] = 99.0  # a plausible number, edited by hand
    path.write_text(json.dumps(entry))
    fresh = Store(tmp_path)
    assert fresh.run(job)["result"]["value"] == 2.0
    assert "checksum" in fresh.corrupt[0]


def test_an_entry_under_another_key_or_missing_a_field_is_rejected(tmp_path):
    store = Store(tmp_path)
    a, b = _job(1), _job(2)
    store.run(a)
    store.run(b)
    path_a = store.path(store.key(a.kind, a.config))
    path_b = store.path(store.key(b.kind, b.config))
    path_b.write_text(path_a.read_text())  # a valid entry copied to the wrong name
    fresh = Store(tmp_path)
    assert fresh.run(b)["result"]["value"] == 4.0 and "another configuration" in fresh.corrupt[0]
    strict = runner.Job("demo", {"a": 1}, _value, fields=("value", "missing_field"))
    assert Store(tmp_path).get(store.key(a.kind, a.config), strict.fields) is None


def test_array_file_checksum(tmp_path):
    store = Store(tmp_path)
    job = _job()
    store.run(job)
    npz = tmp_path / f"{store.key(job.kind, job.config)}.npz"
    npz.write_bytes(npz.read_bytes()[:-10] + b"0123456789")
    fresh = Store(tmp_path)
    assert fresh.run(job)["arrays"]["w"].tolist() == [[1.0, 2.0]] and fresh.misses == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_computed_and_cached_entries_are_identical(tmp_path):
    store = Store(tmp_path)
    first = store.run(_job())
    again = Store(tmp_path).run(_job())
    def plain(entry):
        return {k: v for k, v in entry.items() if k != "arrays"}

    assert plain(first) == plain(again)


def test_store_path_that_is_a_file_is_a_one_line_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        Store(f)
    with pytest.raises(ConfigError, match="positive integer"):
        Store(tmp_path, threads=0)


def test_cli_store_that_is_a_file(tmp_path, capsys):
    from ldfa.cli import main

    f = tmp_path / "store"
    f.write_text("x")
    assert main(["figures", "--preset", "tiny", "--store", str(f), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a folder" in err


def _slow_square(config, store):
    return {"value": config["a"] ** 2, "draw": float(torch.rand(1))}


def test_runner_same_numbers_with_any_worker_count(tmp_path):
    jobs = [runner.Job("sq", {"a": a}, _slow_square, label=f"a={a}") for a in range(4)]
    one, two = Store(tmp_path / "one"), Store(tmp_path / "two")
    runner.execute(jobs, one, workers=1, progress=False, log=lambda s: None)
    stats = runner.execute(jobs, two, workers=2, progress=False, log=lambda s: None)
    assert stats["computed"] == 4
    for job in jobs:
        assert one.run(job)["result"] == two.run(job)["result"]
    again = runner.execute(jobs, two, workers=2, progress=False, log=lambda s: None)
    assert again["computed"] == 0 and again["cached"] == 4


def test_runner_runs_dependencies_first(tmp_path):
    base = runner.Job("sq", {"a": 3}, _slow_square)
    after = runner.Job("after", {"a": 3}, _after, needs=(runner.Job("sq", {"a": 3}, _slow_square),))
    store = Store(tmp_path)
    runner.execute([after, base], store, workers=2, progress=False, log=lambda s: None)
    assert store.run(after)["result"]["value"] == 10


def _after(config, store):
    entry = store.get(store.key("sq", config))
    assert entry is not None, "dependency not computed first"
    return {"value": entry["result"]["value"] + 1}
