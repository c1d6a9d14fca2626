"""The workdir contract: every artifact's file name and its typed save/load, in one place.

<workdir>/<stage>/ holds a stage's artifacts, its `metrics.json` and, written last, `stage.json`
(its fingerprint). The data stage's split and item table are written once and read by every later
stage (instead of re-parsing the raw files each time)."""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from rqsid_jax.data import embeddings
from rqsid_jax.data.dataset import ItemTable, Split

# Every stage
METRICS = "metrics.json"
STAGE = "stage.json"  # written last: the stage is complete for this fingerprint
FINGERPRINT = "fingerprint"  # the fingerprint a (possibly unfinished) stage folder is built for
CONFIG = "config.json"  # <workdir>/config.json: the whole config of the last run
REPORT = "report.md"
# data
SPLIT = "split.npz"
ITEMS = "items.json"
# embeddings
EMBEDDINGS = embeddings.CACHE
# tokenizer (RQ-KMeans; the RQ-VAE keeps its input statistics in its checkpoint)
CODEBOOKS = "codebooks.npy"
INPUT_NORM = "input_norm.npz"
# sids
CODES = "codes.npy"
SIDS = "sids.npy"
ITEM_IDS = "item_ids.json"
SID_TABLE = "sid_table.tsv"
RESIDUALS = "residuals.npy"
# hourglass
ANALYSIS = "analysis.json"
HEAD_TOKENS = "head_tokens_layer2.npy"
# trained models (retriever, baseline, each ablation variant)
TRAIN_LOG = "log.jsonl"  # appended across resumes: the whole curve survives a kill
HISTORY = "history.json"
LEARNING_CURVE = os.path.join("figures", "learning_curve.png")
CHECKPOINTS = "checkpoints"
PREDICTIONS = "predictions_test.npz"
_RAGGED = ("train", "valid_history", "test_history")


def _ragged(parts) -> tuple[np.ndarray, np.ndarray]:
    lens = np.array([len(p) for p in parts], np.int64)
    flat = np.concatenate([np.asarray(p, np.int32) for p in parts]) if len(parts) else np.zeros(0, np.int32)
    return flat.astype(np.int32), lens


def _unragged(flat: np.ndarray, lens: np.ndarray) -> list[np.ndarray]:
    return np.split(flat, np.cumsum(lens)[:-1]) if lens.size else []


def save_split(data_dir: str, split: Split) -> None:
    """`split.npz`: user ids and tokens, targets, and each ragged part as values + lengths
    (`test_history` / `test_history_len` as before, so older readers still work)."""
    arrays = {"user_ids": np.array(split.user_ids), "user_tokens": split.user_tokens,
              "valid_target": split.valid_target, "test_target": split.test_target}
    for name in _RAGGED:
        arrays[name], arrays[f"{name}_len"] = _ragged(getattr(split, name))
    np.savez(os.path.join(data_dir, SPLIT), **arrays)


def load_split(data_dir: str) -> Optional[Split]:
    """The saved split, or None when the file predates the full format (the caller re-parses)."""
    path = os.path.join(data_dir, SPLIT)
    if not os.path.exists(path):
        return None
    with np.load(path, allow_pickle=False) as z:
        if not all(f"{name}_len" in z.files for name in _RAGGED):
            return None
        parts = {name: _unragged(z[name], z[f"{name}_len"]) for name in _RAGGED}
        return Split(user_ids=z["user_ids"].tolist(), user_tokens=z["user_tokens"], valid_target=z["valid_target"],
                     test_target=z["test_target"], **parts)


def save_items(data_dir: str, items: ItemTable) -> None:
    """`items.json`: every column of the item table, in dataset order."""
    with open(os.path.join(data_dir, ITEMS), "w") as f:
        json.dump({"item_ids": items.ids, "asins": items.asins, "titles": items.titles, "brands": items.brands,
                   "categories": items.categories, "prices": items.prices}, f)


def load_items(data_dir: str) -> Optional[ItemTable]:
    """The saved item table, or None when the file predates the full format."""
    path = os.path.join(data_dir, ITEMS)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        d = json.load(f)
    if "brands" not in d:
        return None
    return ItemTable(d["item_ids"], d["asins"], d["titles"], d["brands"], d["categories"], d["prices"])


def write_json(path: str, obj) -> None:
    """Writes obj as indented JSON (numpy values converted), atomically: a kill never leaves
    half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)


def read_json(path: str):
    """The JSON value in `path`."""
    with open(path) as f:
        return json.load(f)


def load_embeddings(embeddings_dir: str) -> np.ndarray:
    """The embeddings stage's [N, D] float32 array."""
    return np.load(os.path.join(embeddings_dir, EMBEDDINGS), allow_pickle=False)


def load_codes(sids_dir: str) -> np.ndarray:
    """The sids stage's codes [N, L] (after any collision-free reassignment)."""
    return np.load(os.path.join(sids_dir, CODES))


def load_residuals(sids_dir: str) -> np.ndarray:
    """Each item's residual entering each level [L, N, latent] (the hourglass analysis's input)."""
    return np.load(os.path.join(sids_dir, RESIDUALS))


def file_name(name: str) -> str:
    """A SID set's or variant's name as used in file and directory names ('top@20' -> 'top_at_20')."""
    return name.replace("@", "_at_")


def sid_set_path(hourglass_dir: str, name: str) -> str:
    """Where the hourglass stage saves the mitigated SID set `name`."""
    return os.path.join(hourglass_dir, f"sids_{file_name(name)}.npy")


def load_head_tokens(hourglass_dir: str) -> np.ndarray:
    """The layer-2 head tokens (the hourglass stage's head/tail split)."""
    return np.load(os.path.join(hourglass_dir, HEAD_TOKENS))
