"""The results store: one JSON file (plus optional arrays) per run, keyed by a hash of its
configuration, of the code and of the run environment, written atomically.

Everything that changes a number is in the key: the configuration, the code (a hash of
theory/ and sim/), and the environment the run computes in (torch and numpy versions,
torch CPU threads, device, default dtype). The store itself fixes the thread count: every
computation it runs is pinned to ``Store.threads`` (1 unless asked otherwise), so the key
records the count the numbers were made with. Each entry carries a SHA-256 checksum of its
whole content (the JSON and the array file); an entry that fails the checksum, the schema
or its key is reported in one line and recomputed, never used.

    store = Store("runs/store")
    entry = store.cached("train", config_dict, lambda: {"test_acc": ...})
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from ..theory.errors import ConfigError
from ..theory.trajectory import atomic_write

PACKAGE_DIRS = ("theory", "sim")  # the code that computes results; plotting code may change freely
# every entry holds these fields with these types, and "sha256" (str)
SCHEMA = {"kind": str, "config": dict, "code": str, "env": dict, "result": dict}


@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of every .py file of the package: any code change gives new keys."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for d in PACKAGE_DIRS:
        for path in sorted((root / d).glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def environment(threads: int, device: str = "cpu") -> dict:
    """The settings besides the configuration that change a run's numbers."""
    import torch

    return {"torch": torch.__version__, "numpy": np.__version__, "threads": threads, "device": device,
            "dtype": str(torch.get_default_dtype())}


@contextmanager
def torch_threads(n: int):
    """Run the body with ``n`` torch intra-op threads, then restore the previous count."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def seed_everything(seed: int = 0) -> None:
    """Reset Python's, numpy's and torch's global generators: a run's numbers do not depend on
    which runs the same process did before it."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _plain(obj):
    """JSON fallback: numpy scalars and arrays as numbers and lists, anything else as text."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, default=_plain).encode()


def _normalized(obj):
    """``obj`` as it reads back from JSON (tuples as lists, numpy scalars as Python numbers)."""
    return json.loads(_canonical(obj))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Store:
    """Runs on disk under ``root``: KEY.json ({kind, config, code, env, result, arrays_sha256,
    sha256}) and KEY.npz for arrays. ``threads``: torch threads every computation runs with
    (and its key records); ``code``: the code version in the keys (default: the code now).
    ``hits`` and ``misses`` count lookups; ``corrupt`` lists the bad
    entries found (one line each), also passed to ``report`` if given."""

    def __init__(self, root="runs/store", threads: int = 1, report: Callable[[str], None] | None = None,
                 code: str | None = None):
        self.root = Path(root)
        self.code = code or code_version()  # fixed for the store's life: one run, one code version
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--store {self.root}: exists and is not a folder; give a folder for the "
                              "results store")
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ConfigError(f"threads={threads!r}: must be a positive integer")
        self.threads = threads
        self.report = report
        self.hits = self.misses = 0
        self.corrupt: list[str] = []

    def env(self, config: dict) -> dict:
        return environment(self.threads, str(config.get("device", "cpu")))

    def _key(self, kind: str, config, code: str, env: dict) -> str:
        blob = _canonical({"kind": kind, "config": config, "code": code, "env": env})
        return f"{kind}-{_digest(blob)[:16]}"

    def key(self, kind: str, config: dict) -> str:
        return self._key(kind, config, self.code, self.env(config))

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str, fields: tuple = ()) -> dict | None:
        """The stored entry, or None if absent; an entry that is unreadable, fails its checksum,
        breaks the schema, belongs to another key or lacks a result field in ``fields`` is
        reported, recorded in ``corrupt`` and treated as absent."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return self._read(key, path, fields)
        except (OSError, ValueError, KeyError, TypeError) as err:
            line = f"{key}: {err}"
            self.corrupt.append(line)
            if self.report:
                self.report(f"results store: corrupt entry {path} ({err}); recomputing it")
            return None

    def _read(self, key: str, path: Path, fields: tuple) -> dict:
        entry = json.loads(path.read_text())
        if not isinstance(entry, dict):
            raise ValueError(f"not a JSON object but {type(entry).__name__}")
        missing = [f for f in (*SCHEMA, "sha256") if f not in entry]
        if missing:
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        for name, typ in SCHEMA.items():
            if not isinstance(entry[name], typ):
                raise ValueError(f"field {name} is {type(entry[name]).__name__}, not {typ.__name__}")
        body = {k: v for k, v in entry.items() if k != "sha256"}
        if _digest(_canonical(body)) != entry["sha256"]:
            raise ValueError("content does not match its checksum (edited or damaged)")
        if self._key(entry["kind"], entry["config"], entry["code"], entry["env"]) != key:
            raise ValueError("entry belongs to another configuration")
        lacking = [f for f in fields if f not in entry["result"]]
        if lacking:
            raise ValueError(f"result lacks {', '.join(lacking)}")
        digest = entry.get("arrays_sha256")
        if digest is not None:
            raw = (self.root / f"{key}.npz").read_bytes()
            if _digest(raw) != digest:
                raise ValueError("array file does not match its checksum")
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                entry["arrays"] = {k: z[k] for k in z.files}
        return entry

    def put(self, key: str, kind: str, config: dict, result: dict, arrays: dict | None = None) -> dict:
        """Write the entry (arrays first, then the JSON with both checksums); returns it as a
        later ``get`` will read it."""
        if not isinstance(result, dict):
            raise TypeError(f"a stored result must be a dict, not {type(result).__name__}")
        body = _normalized({"kind": kind, "config": config, "code": self.code, "env": self.env(config),
                            "result": result})
        if arrays:
            buf = io.BytesIO()
            np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
            raw = buf.getvalue()
            atomic_write(self.root / f"{key}.npz", lambda f: f.write(raw), binary=True)
            body["arrays_sha256"] = _digest(raw)
        entry = {**body, "sha256": _digest(_canonical(body))}
        atomic_write(self.path(key), lambda f: f.write(_canonical(entry).decode()))
        if arrays:
            entry["arrays"] = {k: np.asarray(v) for k, v in arrays.items()}
        return entry

    def cached(self, kind: str, config: dict, compute: Callable[[], tuple[dict, dict | None] | dict],
               fields: tuple = ()) -> dict:
        """The stored entry for (kind, config), computing and storing it first if needed.

        ``compute`` returns a result dict, or (result, arrays); it runs with ``threads`` torch
        threads and the global generators reset (seed_everything), so the same configuration
        gives the same numbers whichever process computes it and after whatever else.
        """
        key = self.key(kind, config)
        entry = self.get(key, fields)
        if entry is not None:
            self.hits += 1
            return entry
        self.misses += 1
        with torch_threads(self.threads):
            seed_everything(0)
            out = compute()
        result, arrays = out if isinstance(out, tuple) else (out, None)
        return self.put(key, kind, config, result, arrays)

    def run(self, job) -> dict:
        """The entry of a runner.Job: ``job.fn(job.config, self)`` computed once, then cached."""
        return self.cached(job.kind, job.config, lambda: job.fn(job.config, self), job.fields)
