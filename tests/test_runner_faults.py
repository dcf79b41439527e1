"""`ldfa figures` worker processes die with the main process (no leaked workers after SIGKILL)."""

import os
import signal
import subprocess
import sys
import time


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout
    return bool(stat.strip()) and not stat.strip().startswith("Z")


def test_sigkill_of_figures_kills_its_workers(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "ldfa.cli", "figures", "--preset", "tiny",
                             "--workers", "2",
                             "--only", "mlp_accuracy_vs_rank", "--out", str(tmp_path / "out"),
                             "--store", str(tmp_path / "store")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    deadline = time.time() + 120
    while time.time() < deadline and len(workers) < 2:
        workers = [p for p in _children(proc.pid)
                   if "spawn" in subprocess.run(["ps", "-o", "args=", "-p", str(p)], capture_output=True,
                                                text=True).stdout]
        time.sleep(0.2)
    assert len(workers) == 2, "the worker processes did not start"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers)
