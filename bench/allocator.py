"""A steady heap for timing runs: the same rule should cost the same wherever it runs in a benchmark.

glibc's malloc serves a large block (a batch of activations, a weight's gradient) from fresh pages
mapped for it (mmap) and returns them when the block is freed; the next allocation of that size
takes a page fault per 4 KiB page as it is first written, paid in kernel time. Its threshold for
"large" moves with the allocation history (it rises when a mapped block is freed), so one rule
in an interleaved run may take every tensor from reused heap memory while another, measured
after it, takes thousands of faults per step: on a 2-core x86_64 VM the MLP's bp step was charged
10 000 faults and 23 ms of kernel time a step (of 109 ms), ResNet-18's 46 ms of 169 ms, while
the ld rules measured next to them took none. Such a ratio measures the allocator's history, not
the rule.

:func:`steady` fixes the threshold at its largest value and stops trimming the heap, so every
rule reuses freed memory alike (what jemalloc or tcmalloc do by design, and what PyTorch's CPU
performance guide recommends them for). It changes no number a rule computes.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters of glibc's <malloc.h>
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)  # glibc's cap: 32 MiB on 64-bit


def steady() -> str:
    """Fix glibc's mmap threshold (largest allowed) and never trim the heap. Returns what was
    done, for the benchmark's header; elsewhere (macOS, musl, Windows) nothing is changed."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
    except (OSError, AttributeError, TypeError):
        return "system allocator (not glibc: left as it is)"
    ok = (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
          and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1)
    if not ok:
        return f"glibc {version} (mallopt refused: allocator left as it is)"
    return f"glibc {version}, blocks up to {MMAP_THRESHOLD_MAX >> 20} MiB from the reused heap, no trim"


def add_option(parser) -> None:
    """The benchmarks' ``--allocator steady|system`` option (steady by default)."""
    parser.add_argument("--allocator", choices=("steady", "system"), default="steady",
                        help="steady: glibc's heap reused alike by every rule (bench/allocator.py)")


def from_option(choice: str) -> str:
    """Apply ``--allocator``: :func:`steady` for "steady"; returns the line for the header."""
    return steady() if choice == "steady" else "system allocator"
