"""argparse types for ldfa's command line and the scripts in bench/: each checks one value when
it is parsed, before anything is imported or run, and rejects a bad one in one line that names
it and what is allowed (exit status 2)."""

from __future__ import annotations

import argparse
import math

MAX_SEED = 2**63 - 1      # the largest seed torch and numpy both take
MAX_LAYERS = 8            # symbolic derivation and the matrix ODEs grow fast with depth
MAX_DIM = 4096            # widths of the theory's matrix ODEs
MAX_WIDTH = 1 << 16       # widths and ranks of trained networks
MAX_COUNT = 10**9         # steps, batch sizes, logging intervals
MAX_POINTS = 100_000      # time points of a trajectory
MAX_THREADS = 1024
MAX_WORKERS = 256


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors ('ldfa train: error: argument --seed: ...', exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0] if message else ''}\n")


def int_in(lo: int, hi: int):
    """An argparse type: an integer lo <= n <= hi."""
    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; allowed: {lo}..{hi}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is out of range; allowed: {lo}..{hi}")
        return value
    return integer


def float_in(lo: float, hi: float = math.inf, lo_allowed: bool = True):
    """An argparse type: a finite number x with lo <= x (lo < x if not lo_allowed) and x < hi."""
    where = f"{'>=' if lo_allowed else '>'} {lo:g}" + (f" and < {hi:g}" if math.isfinite(hi) else "")

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; allowed: {where}") from None
        if not (math.isfinite(value) and (value >= lo if lo_allowed else value > lo) and value < hi):
            raise argparse.ArgumentTypeError(f"{text} is out of range; allowed: a finite number {where}")
        return value
    return number


def width_list(text: str) -> tuple:
    """An argparse type: comma-separated layer widths, e.g. 256,256."""
    parts = text.split(",")
    try:
        widths = tuple(int(w) for w in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: need comma-separated integers, e.g. 256,256") from None
    if not 1 <= len(widths) <= 64 or not all(1 <= w <= MAX_WIDTH for w in widths):
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 to 64 widths, each in 1..{MAX_WIDTH}")
    return widths


def file_stem(text: str) -> str:
    """An argparse type: a file stem (a name, not a path) for the files a command writes."""
    bad = [c for c in text if c in "/\\" or ord(c) < 32 or c == "\x7f"]
    if not text or len(text) > 200 or bad or text.startswith(".") or text.startswith("-"):
        raise argparse.ArgumentTypeError(f"{text!r}: need a file name (1-200 characters, no '/', '\\' "
                                         "or control characters, not starting with '.' or '-')")
    return text


def device_name(text: str) -> str:
    """An argparse type: cpu, cuda or cuda:N."""
    kind, sep, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (sep and (kind == "cpu" or not index.isdigit() or len(index) > 3)):
        raise argparse.ArgumentTypeError(f"{text!r}; allowed: cpu, cuda, cuda:N")
    return text


SEED = int_in(0, MAX_SEED)
THREADS = int_in(1, MAX_THREADS)
POSITIVE = float_in(0, lo_allowed=False)
NON_NEGATIVE = float_in(0)
