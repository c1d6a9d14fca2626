"""Content signatures of input files, so a changed input reruns the stages that read it.

A stage's fingerprint covers its config and, for the stages that read files the user supplies
(the dataset files, an embeddings .npy), each file's SHA-256. Hashes are cached per machine by
(path, size, mtime), so an unchanged multi-GB file is not reread on every run.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile


def _cache_path() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "rqsid_jax", "file_hashes.json")


def _load_cache() -> dict:
    try:
        with open(_cache_path()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}  # no cache, or a damaged one: hash again


def _save_cache(cache: dict) -> None:
    path = _cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".file_hashes.")
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs rehashing next time


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def signatures(paths) -> dict:
    """{absolute path: {size, sha256}} of every existing file in `paths`."""
    cache, changed, out = _load_cache(), False, {}
    for p in paths:
        p = os.path.abspath(p)
        if not os.path.isfile(p):
            continue
        st = os.stat(p)
        key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
        if key not in cache:
            cache[key] = sha256_file(p)
            changed = True
        out[p] = {"size": st.st_size, "sha256": cache[key]}
    if changed:  # entries of files that are gone (e.g. test temp dirs) are dropped
        _save_cache({k: v for k, v in cache.items() if os.path.exists(k.rsplit("|", 2)[0])})
    return out
