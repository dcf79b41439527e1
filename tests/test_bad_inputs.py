"""Every bad input is refused before any compute or write: exit status 2, one line on stderr
naming the value, no traceback, nothing written, well within a second. A corpus of bad values
for every command (ldfa.cli.main called in-process; a few through a real subprocess)."""

import json
import subprocess
import sys
import time

import pytest

from ldfa import cli

BIG = "99999999999999999999999"

THEORY = {
    "--seed": ["-1", BIG, "abc", "1.5", ""],
    "--points": ["1000000000", "1", "0", "-5", "x"],
    "--layers": ["1", "0", "100000", "-2", "two"],
    "--n-in": ["0", "-1", "1000000", "a"],
    "--hidden": ["0", "99999", "x"],
    "--n-out": ["0", "-3", "abc"],
    "--noise": ["-1", "nan", "inf", "x"],
    "--init-scale": ["-1", "nan", "inf"],
    "--tau": ["0", "-1", "nan", "inf", "x"],
    "--tau-b": ["0", "nan"],
    "--tau-p": ["0", "-0.1"],
    "--tau-q": ["inf", "0"],
    "--weight-decay": ["-1", "nan"],
    "--t-max": ["0", "-1", "inf", "nan"],
    "--spectrum": ["a,b", "inf", "nan,1", "", "-1,2"],
    "--init": ["bogus"],
    "--name": ["a/b", "../x", "", ".hidden", "a\\b"],
    "--format": ["xml"],
}
THEORY_OTHER = [
    ["theory", "nope"], ["theory", "ld", "--rank", "0"], ["theory", "ld", "--rank", "-1"],
    ["theory", "ld", "--rank", "100000"], ["theory", "ld", "--rank", "r"],
    ["theory", "ld", "--p-rule", "nope"],
    ["theory", "ld", "--q-rule", "nope"], ["theory", "bp", "--rank", "3"],
    ["theory", "bp", "--n-out", "3", "--spectrum", "5,4,3,2,1"], ["theory", "ld", "--rank", "11"],
]
DERIVE = [["derive", "bp", "--layers", v] for v in ("100000", "1", "0", "-1", "x", "9")] + [
    ["derive", "nope"], ["derive", "ld", "--p-rule", "bogus"], ["derive", "ld", "--q-rule", "bogus"]]

TRAIN = {
    "--hidden": ["a,b", "", "0", "-1", "1,,2", "99999999", "1.5"],
    "--seed": ["-1", BIG, "x"],
    "--device": ["cpu:abc", "gpu", "cuda:x", "", "cpu:0", "cuda:99999", "cuda"],
    "--threads": ["-1", "0", "99999", "x"],
    "--name": ["a/b", "../x", "", ".x", "-x"],
    "--clamp": ["-1", "0", "nan", "inf", "x"],
    "--weight-decay": ["-1", "nan", "inf"],
    "--fb-lr": ["-1", "0", "nan"],
    "--checkpoint-every": ["-1", "0", "x"],
    "--lr": ["0", "-1", "nan", "inf", "x"],
    "--epochs": ["0", "-1", "nan", "inf", "1e9"],
    "--steps": ["0", "-1", "1.5", "10000000000"],
    "--batch-size": ["0", "-1", "x"],
    "--log-every": ["0", "-1"],
    "--model": ["nope", "MLP"],
    "--optimizer": ["nope"],
    "--data": ["nope", "mnist"],
    "--classes": ["a,b", "11", "1,1", "-1"],
    "--activation": ["nope"],
    "--format": ["xml"],
    "--rule": ["nope", "fa,bp"],
}
TRAIN_OTHER = [
    ["--rule", "ld", "--rank", "0"], ["--rule", "ld", "--rank", "-1"],
    ["--rule", "ld", "--rank", "1000000000"],
    ["--rule", "ld", "--rank", "1000", "--hidden", "16"], ["--rule", "fa", "--rank", "3"],
    ["--rule", "ld", "--rank", "2", "--p-rule", "nope"], ["--rule", "ld", "--rank", "2", "--q-rule", "nope"],
    ["--rule", "ld", "--rank", "2", "--factor-init", "nope"], ["--rule", "bp", "--p-rule", "oja"],
    ["--model", "cnn", "--hidden", "999"], ["--rule", "sign", "--scaling", "nope"],
    ["--transfer", "toast"], ["--backbone", "x.pt"], ["--transfer", "toast", "--backbone", "missing.pt",
                                                      "--model", "vit"],
    ["--transfer", "probe", "--backbone", "x.pt", "--model", "mlp"],
    ["--rule", "dtp", "--inverse-iters", "0"], ["--rule", "dtp", "--tp-beta", "0"],
    ["--rule", "dtp", "--tp-noise", "-1"], ["--rule", "bp", "--tp-beta", "0.5"],
    ["--rule", "dtp", "--model", "cnn"], ["--rule", "dtp", "--inverse-iters", "3"],
    ["--hidden", "60000,60000"], ["--data", "cifar10", "--data-root", "/nonexistent/cifar"],
    ["--data", "mnist", "--data-root", "/nonexistent/mnist"],
    ["--data", "linear-teacher", "--classes", "1,2"],
    ["--data", "fashion-mnist", "--data-root", "/nonexistent"],
    ["--data", "linear-teacher", "--data-root", "/tmp"],
]


def _sweep_configs():
    base = {"model": "mlp", "hidden": [16], "data": "linear-teacher", "steps": 5}
    ld = {**base, "rule": "ld", "p_rule": "oja", "q_rule": "kp"}
    configs = [
        [1], "x", None, {}, {"base": base}, {"base": "mlp", "grid": {"seed": [0]}}, {"include": [1, 2]},
        {"include": {"seed": 1}}, {"grid": [1]}, {"grid": {"seed": []}}, {"grid": {"seed": 5}},
        {"grid": {"nope": [1]}}, {"grid": {"rule": ["bp", "nope"]}},
        {"base": ld, "grid": {"rank": [1, 2, 3, 4, 10**9]}},
        {"base": ld, "grid": {"rank": [1, 2, 3, 4, 17]}}, {"base": base, "include": [{"model": "nope"}]},
        {"base": base, "grid": {"lr": [-1]}}, {"base": base, "grid": {"lr": ["x"]}},
        {"base": base, "grid": {"seed": [-1]}}, {"base": base, "grid": {"seed": [True]}},
        {"base": base, "grid": {"hidden": ["a"]}}, {"base": base, "grid": {"hidden": [[0]]}},
        {"base": base, "grid": {"device": ["cpu:abc"]}}, {"base": base, "grid": {"device": [1]}},
        {"base": base, "grid": {"seed": [0]}, "workers": 0},
        {"base": base, "grid": {"seed": [0]}, "workers": "2"},
        {"base": base, "grid": {"seed": [0]}, "store": 5},
        {"base": base, "grid": {"seed": [0]}, "unknown": 1},
        {"base": base, "grid": {"steps": [1.5]}}, {"base": base, "grid": {"batch_size": [0]}},
        {"base": base, "grid": {"clamp": [-1]}}, {"base": base, "grid": {"model_options": ["x"]}},
        {"base": base, "grid": {"classes": [[1, 1]]}}, {"base": base, "grid": {"rule": [None]}},
        {"base": base, "grid": {"epochs": [float("nan")]}},
        {"base": base, "grid": {"weight_decay": [-1e-3]}},
        {"base": {**base, "model": "cnn"}, "grid": {"hidden": [[999]]}},
        {"base": base, "grid": {"seed": [0, 1, 2, 3], "momentum": [2.0]}},
        {"base": base, "grid": {"seed": list(range(1000)), "lr": [0.1] * 1000}},
        {"base": {**base, "data": "cifar10", "data_root": "/nonexistent"}, "grid": {"seed": [0, 1]}},
        {"base": base, "grid": {"seed": [0, 1]}, "include": [{"data": "mnist"}]},
    ]
    return [json.dumps(c) if not isinstance(c, str) else c for c in configs]


RAW_SWEEP_FILES = {"binary": b"\x00\xff\xfe\x80binary", "empty": b"", "truncated": b'{"grid": {"seed": [0,',
                   "deep": b"[" * 100000 + b"]" * 100000, "huge": b" " * (2 << 20) + b"{}",
                   "latin1": '{"grid": {"rule": ["é"]}}'.encode("latin-1")}


def cases():
    out = []
    for flag, values in THEORY.items():
        out += [["theory", "bp", flag, v] for v in values]
    out += THEORY_OTHER + DERIVE
    for flag, values in TRAIN.items():
        out += [["train", flag, v] for v in values]
    out += [["train", *extra] for extra in TRAIN_OTHER]
    out += [["train", "--save-model", "{dir}"], ["train", "--save-model", "{file}/x.pt"],
            ["train", "--checkpoint", "{dir}"], ["train", "--checkpoint", "{file}/x.pt"],
            ["train", "--checkpoint", "{file}"], ["train", "--out", "{file}"],
            ["theory", "bp", "--out", "{file}"]]
    out += [["sweep", f"{{config{i}}}"] for i in range(len(_sweep_configs()))]
    out += [["sweep", f"{{raw:{name}}}"] for name in RAW_SWEEP_FILES]
    out += [["sweep", "{dir}"], ["sweep", "{dir}/missing.json"]]
    out += [["sweep", "{good}", "--workers", v] for v in ("0", "-1", "x", "100000")]
    out += [["sweep", "{good}", "--executor", "nope"], ["sweep", "{good}", "--store", "{file}"]]
    out += [["verify", "--only", "nope"], ["verify", "--threads", "0"], ["paper", "--threads", "-1"],
            ["figures", "--threads", "0"], ["bench", "--only", "nope"], ["nope"], [],
            ["paper", "--preset", "nope"], ["paper", "--store", "{file}"], ["figures", "--preset", "nope"],
            ["figures", "--only", "nope"], ["figures", "--store", "{file}"],
            ["verify", "--rule", "bp", "--layers", "100000"], ["verify", "--rule", "bp", "--eta", "-1"],
            ["verify", "--rule", "ld", "--rank", "-3"], ["verify", "--rule", "nope"],
            ["verify", "--p-rule", "oja"]]
    out += [["reproduce", *a] for a in (["--dataset", "nope"], ["--ranks", "0"], ["--seeds", "-1"],
                                        ["--epochs", "nan"], ["--epochs", "-1"], ["--threads", "0"],
                                        ["--checkpoint-every", "0"], ["--ranks", "a"], ["--device", "cpu:x"])]
    return out


CASES = cases()


def test_the_corpus_is_large():
    assert len(CASES) >= 150


def test_the_harness_sees_an_accepted_input(tmp_path, capsys):
    """The control: a good command runs (exit status 0), so a bad value that slipped through would fail."""
    assert cli.main(["train", "--data", "linear-teacher", "--hidden", "8", "--steps", "2", "--quiet",
                     "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err == "" and list(tmp_path.glob("*.jsonl"))


@pytest.fixture(scope="module", autouse=True)
def imported():
    """Import what the commands import, so that the timing below is of the checks alone (a cold
    `import torch` takes seconds; a real process pays it once, before any check runs)."""
    import ldfa.figures.make  # noqa: F401
    import ldfa.figures.paper  # noqa: F401
    import ldfa.figures.sweep  # noqa: F401
    import ldfa.figures.verify  # noqa: F401
    import ldfa.sim.train  # noqa: F401
    import ldfa.theory.integrate  # noqa: F401


@pytest.fixture
def where(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("not a checkpoint")
    for i, text in enumerate(_sweep_configs()):
        (tmp_path / f"config{i}.json").write_text(text)
    for name, raw in RAW_SWEEP_FILES.items():
        (tmp_path / f"raw-{name}.json").write_bytes(raw)
    (tmp_path / "good.json").write_text(json.dumps({"grid": {"seed": [0]}, "base": {
        "model": "mlp", "hidden": [8], "data": "linear-teacher", "steps": 2}}))
    return tmp_path


def _fill(argv, tmp_path):
    subs = {"{dir}": str(tmp_path / "dir"), "{file}": str(tmp_path / "file"),
            "{good}": str(tmp_path / "good.json")}
    out = []
    for a in argv:
        if a.startswith("{config"):
            a = str(tmp_path / f"{a[1:-1]}.json")
        elif a.startswith("{raw:"):
            a = str(tmp_path / f"raw-{a[5:-1]}.json")
        for k, v in subs.items():
            a = a.replace(k, v)
        out.append(a)
    return out


def _files(folder):
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.parametrize("argv", CASES, ids=[" ".join(c)[:60] for c in CASES])
def test_bad_input_is_refused_in_one_line(argv, where, capsys, monkeypatch):
    monkeypatch.chdir(where / "dir")  # default output folders (runs/...) would land here
    argv = _fill(argv, where)
    if argv and argv[0] in ("train", "theory", "reproduce") and "--out" not in argv:
        argv += ["--out", str(where / "out")]
    if argv and argv[0] == "train":
        argv += ["--quiet"] + (["--data", "linear-teacher"] if "--data" not in argv else [])
    if argv and argv[0] == "sweep" and "--store" not in argv:
        argv += ["--store", str(where / "store")]
    before = {p: p.stat().st_mtime_ns for p in _files(where)}
    t0 = time.perf_counter()
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, f"exit status {code} for {argv}: {err}"
    assert len(err) == 1 and err[0].startswith("ldfa") and "Traceback" not in err[0], err
    after = {p: p.stat().st_mtime_ns for p in _files(where)}
    assert after == before, f"files written: {set(after) - set(before)}"
    assert elapsed < 1.0, f"{elapsed:.1f} s to refuse {argv}"  # most take milliseconds


@pytest.mark.parametrize("argv", [["theory", "bp", "--seed", "-1"], ["train", "--hidden", "a,b"],
                                  ["train", "--device", "cpu:abc", "--threads", "1"],
                                  ["derive", "bp", "--layers", "100000"],
                                  ["sweep", "--workers", "0", "x.json"]])
def test_bad_input_through_a_real_process(argv, tmp_path):
    done = subprocess.run([sys.executable, "-m", "ldfa.cli", *argv], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1 and "Traceback" not in done.stderr, done.stderr
    assert not list(tmp_path.iterdir())
