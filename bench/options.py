"""Command-line options shared by the scripts in bench/: a bad value is rejected in one line that
names it and what is allowed (exit status 2), before any model is built or timed."""

from __future__ import annotations

import argparse

from ldfa.argtypes import MAX_COUNT, THREADS, Parser, device_name, int_in
from ldfa.errors import ConfigError

COUNT = int_in(1, MAX_COUNT)  # repeats, steps, sizes, batches
__all__ = ["COUNT", "THREADS", "Parser", "torch_device", "parser"]


def torch_device(text: str) -> str:
    """cpu, cuda or cuda:N, and present on this machine."""
    from ldfa.sim.train import check_device  # torch: only for the scripts that train

    text = device_name(text)
    try:
        check_device(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def parser(doc: str) -> Parser:
    """A bench script's parser: its docstring's first line as the description."""
    return Parser(description=doc.splitlines()[0])
