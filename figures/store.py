"""The results store: one JSON file (plus optional arrays) per run, keyed by a hash of its
configuration and of the code, written atomically; a corrupt or truncated entry is
detected and recomputed, never used.

    store = Store("runs/store")
    result = store.cached("train", config_dict, lambda: {"test_acc": ...})
"""

from __future__ import annotations

import hashlib
import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from ..theory.trajectory import atomic_write

PACKAGE_DIRS = ("theory", "sim")  # the code that computes results; plotting code may change freely


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


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Store:
    """Runs on disk under ``root``: KEY.json ({kind, config, code, result, arrays digest}) and
    KEY.npz for arrays. ``hits`` and ``misses`` count lookups; ``corrupt`` lists bad keys found."""

    def __init__(self, root="runs/store"):
        self.root = Path(root)
        self.hits = self.misses = 0
        self.corrupt: list[str] = []

    def key(self, kind: str, config: dict) -> str:
        blob = json.dumps({"kind": kind, "config": config, "code": code_version()}, sort_keys=True,
                          default=str)
        return f"{kind}-{_digest(blob.encode())[:16]}"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The stored entry, or None if absent; a corrupt entry is recorded and treated as absent."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text())
            digest = entry.get("arrays_sha256")
            if digest is not None:
                raw = (self.root / f"{key}.npz").read_bytes()
                if _digest(raw) != digest:
                    raise ValueError("array file does not match its checksum")
                with np.load(io.BytesIO(raw)) as z:
                    entry["arrays"] = {k: z[k] for k in z.files}
            if "result" not in entry:
                raise ValueError("no result")
            return entry
        except (OSError, ValueError, KeyError) as err:
            self.corrupt.append(f"{key}: {err}")
            return None

    def put(self, key: str, kind: str, config: dict, result: dict, arrays: dict | None = None) -> dict:
        entry = {"kind": kind, "config": config, "code": code_version(), "result": result}
        if arrays:
            buf = io.BytesIO()
            np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
            raw = buf.getvalue()
            atomic_write(self.root / f"{key}.npz", lambda f: f.write(raw), binary=True)
            entry["arrays_sha256"] = _digest(raw)
        atomic_write(self.path(key), lambda f: json.dump(entry, f, default=float))
        if arrays:
            entry["arrays"] = {k: np.asarray(v) for k, v in arrays.items()}
        return entry

    def cached(self, kind: str, config: dict, compute: Callable[[], tuple[dict, dict | None] | dict]) -> dict:
        """The stored entry for (kind, config), computing and storing it first if needed.

        ``compute`` returns a result dict, or (result, arrays).
        """
        key = self.key(kind, config)
        entry = self.get(key)
        if entry is not None:
            self.hits += 1
            return entry
        self.misses += 1
        out = compute()
        result, arrays = out if isinstance(out, tuple) else (out, None)
        return self.put(key, kind, config, result, arrays)
