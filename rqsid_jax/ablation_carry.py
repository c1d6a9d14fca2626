"""Finished ablation variants carried between machines.

A full Table 2 costs tens of CPU hours, far more than one working session, and a session's
workdir does not outlive it. So each finished variant can also be kept in a results folder
(`ablation.results_dir`, e.g. committed beside the config) as two small files: its
`metrics.json` and `ranks.npz` (the test users, the target's 0-based rank among the beams or -1,
the target rows: all the table, paired intervals and claims need). A later run on another
machine takes a variant from there instead of retraining it, but only when its key matches: a
hash of the variant's retriever config, its SID set, the baseline codes and head tokens (for
head/tail), the whole split and the test users. Anything else is refused with one line, never
mixed into the table.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

import numpy as np

from rqsid_jax import workdir as wd
from rqsid_jax.errors import ConfigError, StorageError
from rqsid_jax.retrieval.metrics import hit_ranks

RANKS = "ranks.npz"
CARRIED = (RANKS, wd.METRICS)  # metrics.json last: it marks a variant done


def variant_key(rc, sids: np.ndarray, codes: np.ndarray, head: np.ndarray, split, test_rows: np.ndarray) -> str:
    """What a variant's result depends on, as a hash that is the same on every machine."""
    h = hashlib.sha256(json.dumps(rc.to_dict(), sort_keys=True, default=str).encode())
    for a in (sids, codes, head, test_rows):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    for f in dataclasses.fields(split):
        v = getattr(split, f.name)
        parts = v if isinstance(v, list) else [v]
        h.update(f.name.encode())
        for p in parts:
            h.update(p.encode() if isinstance(p, str) else np.ascontiguousarray(p, np.int64).tobytes() + b"|")
    return h.hexdigest()[:32]


def save_ranks(folder: str, test_rows: np.ndarray, top_rows: np.ndarray, target_row: np.ndarray) -> None:
    """The per-user ranks a variant's table rows and intervals are computed from."""
    np.savez_compressed(os.path.join(folder, RANKS), test_rows=test_rows,
                        ranks=hit_ranks(top_rows, target_row).astype(np.int16), target_row=target_row)


def load_ranks(folder: str) -> dict:
    """test_rows, ranks and target_row of a finished variant (from the predictions of a variant
    finished before ranks.npz was written)."""
    path = os.path.join(folder, RANKS)
    if os.path.exists(path):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    with np.load(os.path.join(folder, wd.PREDICTIONS)) as p:
        return {"test_rows": p["test_rows"], "ranks": hit_ranks(p["top_rows"], p["target_row"]),
                "target_row": p["target_row"]}


def carry_in(results_dir: str, variant: str, key: str, dest: str) -> bool:
    """Copies a variant finished elsewhere into `dest` when its key matches; False when the
    results folder does not have it. A variant there with another key is an error: its numbers
    belong to other SIDs, data or settings."""
    src = os.path.join(results_dir, wd.file_name(variant))
    if not _holds(src, variant, key):
        return False
    if not os.path.exists(os.path.join(src, RANKS)):
        raise ConfigError(f"{src}: has {wd.METRICS} but no {RANKS}")
    os.makedirs(dest, exist_ok=True)
    for name in CARRIED:
        shutil.copyfile(os.path.join(src, name), os.path.join(dest, name))
    return True


def carry_out(folder: str, results_dir: str, variant: str, key: str) -> None:
    """Copies a variant finished here into the results folder (metrics.json last, atomically),
    unless it is there already; never over a variant of another key."""
    dest = os.path.join(results_dir, wd.file_name(variant))
    if _holds(dest, variant, key):
        return
    try:
        os.makedirs(dest, exist_ok=True)
        for name in CARRIED:
            shutil.copyfile(os.path.join(folder, name), os.path.join(dest, name + ".tmp"))
            os.replace(os.path.join(dest, name + ".tmp"), os.path.join(dest, name))
    except OSError as e:  # the variant itself is kept in the workdir
        raise StorageError(f"ablation.results_dir: cannot write {dest} ({e.strerror or e}); "
                           f"the variant is kept in {folder}") from None


def _holds(src: str, variant: str, key: str) -> bool:
    """Whether a results folder holds `variant` finished with `key` (False: not there at all);
    one with another key is an error."""
    if not os.path.exists(os.path.join(src, wd.METRICS)):
        return False
    try:
        found = wd.read_json(os.path.join(src, wd.METRICS)).get("key")
    except ValueError as e:
        raise ConfigError(f"{os.path.join(src, wd.METRICS)}: not valid JSON ({e})") from None
    if found != key:
        raise ConfigError(f"{src}: ablation variant '{variant}' was made with other SIDs, data or retriever "
                          f"settings (key {found} != {key}); move it away or set another ablation.results_dir")
    return True
