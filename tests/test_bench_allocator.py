"""The benchmarks' steady heap (bench/allocator.py): once it is set, a large block that is freed
and allocated again comes back from memory already mapped, without a page fault per page. Run in
a child process, so that this test process keeps its own allocator."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

CHILD = """
import resource, sys
sys.path.insert(0, {bench!r})
import torch
from allocator import steady
print(steady())
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(4 << 20).fill_(1.0)  # 16 MiB, every page written
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the steady heap is set through glibc's mallopt")
def test_freed_large_block_is_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", CHILD.format(bench=str(BENCH))], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[0].startswith("glibc") and "no trim" in out[0], out[0]
    faults = eval(out[1])
    pages = (16 << 20) // 4096
    assert faults[0] > pages // 2, faults  # the first time, the pages are new
    assert max(faults[2:]) < pages // 20, faults  # then the same memory comes back
