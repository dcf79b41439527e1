"""The benchmarks' steady heap (bench/allocator.py): with it, a large block that is freed and
asked for again comes back from memory already mapped; with glibc's default, the first blocks
of a new large size are mapped anew each time and every page faults again. Each case runs in a
child process, so that this test process keeps its own allocator."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
MiB = 1 << 20
PAGES = 16 * MiB // 4096

CHILD = """
import ctypes, ctypes.util, resource, sys
sys.path.insert(0, {bench!r})
from allocator import steady
print(steady() if {steady} else "system")
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
faults = []
for _ in range(4):  # a 16 MiB block, every page written, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(16 << 20)
    ctypes.memset(p, 1, 16 << 20)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults)
"""


def page_faults(steady: bool):
    out = subprocess.run([sys.executable, "-c", CHILD.format(bench=str(BENCH), steady=steady)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    return out[0], [int(n) for n in out[1].strip("[]").split(",")]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the steady heap is set through glibc's mallopt")
def test_a_freed_large_block_comes_back_without_page_faults():
    heap, steady = page_faults(True)
    assert heap.startswith("glibc") and "no trim" in heap, heap
    assert steady[0] > PAGES // 2, steady  # the first time, the pages are new
    assert max(steady[1:]) < PAGES // 20, steady  # then the same memory comes back
    _, system = page_faults(False)
    assert system[1] > PAGES // 2, system  # glibc's default maps the block anew the second time
