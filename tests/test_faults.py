"""Faults done for real: SIGKILL of a sweep's main process (its workers must die too), two
identical sweeps on one store at once (each run computed once), a full disk (a small tmpfs in a
private mount namespace, and an injected ENOSPC in the middle of a checkpoint write), and
SIGKILL of a training run followed by a resume (bit-identical weights, each log row once)."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ldfa import cli
from ldfa.figures.store import Store
from ldfa.sim import train as training

BASE = {"model": "mlp", "hidden": [16], "data": "linear-teacher", "batch_size": 32, "train_subset": 512,
        "test_subset": 128}
CLI = [sys.executable, "-m", "ldfa.cli"]


def write_config(path, config):
    path.write_text(json.dumps(config))
    return path


def children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def is_worker(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"spawn_main" in cmd


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_sigkill_of_the_sweep_kills_its_workers(tmp_path):
    config = {"base": {**BASE, "steps": 100000}, "grid": {"seed": [0, 1, 2, 3]}}
    store = tmp_path / "store"
    proc = subprocess.Popen([*CLI, "sweep", str(write_config(tmp_path / "s.json", config)), "--store",
                             str(store), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while len(list((store / ".locks").glob("*.lock"))) < 2 and time.time() < deadline:
            time.sleep(0.2)  # both workers are inside a run (their initializer has run)
        workers = [pid for pid in children(proc.pid) if is_worker(pid)]
        assert len(workers) == 2, "the sweep should have two workers training"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 10
        while any(alive(pid) for pid in workers) and time.time() < deadline:
            time.sleep(0.1)
        left = [pid for pid in workers if alive(pid)]
        assert not left, f"workers {left} outlived the sweep's main process"
    finally:
        for pid in [proc.pid, *children(proc.pid)]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not list(store.glob("sweep-train-*.json"))  # nothing finished, nothing half-written


def test_two_identical_sweeps_compute_each_run_once(tmp_path):
    config = {"base": {**BASE, "steps": 200}, "grid": {"rule": ["bp", "fa"], "seed": [0, 1]}}
    path, store = write_config(tmp_path / "s.json", config), tmp_path / "store"
    procs = [subprocess.Popen([*CLI, "sweep", str(path), "--store", str(store), "--workers", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    computed = [int(re.search(r"(\d+) computed", o[0]).group(1)) for o in outs]
    assert sum(computed) == 4, f"computed {computed}: a run was trained by both sweeps"
    entries = list(store.glob("sweep-train-*.json"))
    assert len(entries) == 4 and all(Store(store).get(e.stem)["result"]["status"] == "done" for e in entries)


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=16k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not sys.platform.startswith("linux") or not _unshare_works(),
                                 reason="needs unshare -rm and tmpfs mounts (Linux user namespaces)")


def _on_small_disk(tmp_path, size: str, command: list[str], keep: Path) -> subprocess.CompletedProcess:
    """Run ``command`` with ``keep`` on a fresh tmpfs of ``size`` (a private mount namespace);
    what the command left there is copied back to ``keep`` afterwards."""
    keep.mkdir(parents=True, exist_ok=True)
    script = (f'mount -t tmpfs -o size={size} tmpfs "{keep}" || exit 99\n'
              f'"$@"; rc=$?\nmkdir -p "{tmp_path}/copy"; cp -a "{keep}/." "{tmp_path}/copy/"\nexit $rc\n')
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *command], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode != 99, done.stderr
    shutil.rmtree(keep)
    shutil.copytree(tmp_path / "copy", keep)
    return done


@needs_tmpfs
def test_full_disk_stops_the_sweep_and_keeps_what_was_stored(tmp_path):
    config = {"base": {**BASE, "steps": 20}, "grid": {"seed": list(range(12))}}
    path, store = write_config(tmp_path / "s.json", config), tmp_path / "store"
    command = [*CLI, "sweep", str(path), "--store", str(store), "--workers", "1"]
    done = _on_small_disk(tmp_path, "24k", command, store)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 4 and len(err) == 1 and "No space left on device" in err[0], done.stderr
    assert "Traceback" not in done.stderr
    stored = sorted(store.glob("sweep-train-*.json"))
    assert 1 <= len(stored) < 12
    assert not list(store.glob("*.tmp")) and not list(store.glob(".*.tmp"))  # no half-written file left
    for entry in stored:
        assert Store(store).get(entry.stem)["result"]["status"] == "done"
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)  # more space now
    assert again.returncode == 0 and f"12 runs: {len(stored)} from the store" in again.stdout, again.stdout


TRAIN = ["train", "--data", "linear-teacher", "--hidden", "16", "--batch-size", "32", "--quiet",
         "--threads", "1"]


@needs_tmpfs
def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    args = [*TRAIN, "--steps", "40", "--checkpoint-every", "10", "--out", str(tmp_path / "out")]
    size = len(Path(_straight_checkpoint(tmp_path, args)).read_bytes())
    ckpt = ckpt_dir / "run.pt"
    # room for one checkpoint, not for its successor's temporary file beside it
    done = _on_small_disk(tmp_path, f"{(size * 3 // 2) // 4096 * 4096 + 4096}",
                          [*CLI, *args, "--checkpoint", str(ckpt)], ckpt_dir)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 4 and len(err) == 1 and "No space left on device" in err[0], done.stderr
    assert list(ckpt_dir.iterdir()) == [ckpt]  # no temporary file left
    assert training.read_checkpoint(ckpt)["step"] == 10  # the last complete one, checksum intact
    assert cli.main([*args, "--checkpoint", str(ckpt), "--save-model", str(tmp_path / "resumed.pt")]) == 0
    straight = torch.load(tmp_path / "straight.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def _straight_checkpoint(tmp_path, args) -> Path:
    """An uninterrupted run (its model saved as straight.pt); returns its checkpoint."""
    ckpt = tmp_path / "straight-ckpt.pt"
    assert cli.main([*args, "--checkpoint", str(ckpt), "--save-model", str(tmp_path / "straight.pt")]) == 0
    return ckpt


def test_enospc_in_the_middle_of_a_checkpoint_write(tmp_path, monkeypatch, capsys):
    args = [*TRAIN, "--steps", "40", "--checkpoint-every", "10", "--out", str(tmp_path / "out")]
    _straight_checkpoint(tmp_path, args)
    ckpt = tmp_path / "ckpt" / "run.pt"
    real = training.atomic_write
    calls = {"n": 0}

    def disk_fills(path, write, binary=False):
        calls["n"] += 1
        if calls["n"] < 3:
            return real(path, write, binary)

        def half_then_full(f):  # half the bytes reach the disk, then it is full
            f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, half_then_full, binary)

    monkeypatch.setattr(training, "atomic_write", disk_fills)
    code = cli.main([*args, "--checkpoint", str(ckpt)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4 and len(err) == 1 and "No space left on device" in err[0]
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["run.pt"]
    assert training.read_checkpoint(ckpt)["step"] == 20
    monkeypatch.setattr(training, "atomic_write", real)
    assert cli.main([*args, "--checkpoint", str(ckpt), "--save-model", str(tmp_path / "resumed.pt")]) == 0
    straight = torch.load(tmp_path / "straight.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_sigkill_of_training_then_resume(tmp_path):
    out = tmp_path / "out"
    args = [*TRAIN, "--steps", "3000", "--log-every", "25", "--checkpoint-every", "200", "--out", str(out),
            "--name", "run"]
    ckpt, log = tmp_path / "run.pt", out / "run.jsonl"
    proc = subprocess.Popen([*CLI, *args, "--checkpoint", str(ckpt)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and log.exists():
            steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if line.endswith("}")]
            if steps and steps[-1] > training.read_checkpoint(ckpt)["step"]:
                break  # rows were logged after the last checkpoint: they must not be doubled
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be killed")
    killed_at = training.read_checkpoint(ckpt)["step"]
    assert 0 < killed_at < 3000
    assert cli.main([*args, "--checkpoint", str(ckpt), "--save-model", str(tmp_path / "resumed.pt")]) == 0
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(25, 3001, 25))
    assert cli.main([*args[:-2], "--name", "straight", "--save-model", str(tmp_path / "straight.pt")]) == 0
    straight = torch.load(tmp_path / "straight.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
