"""The data stage's artifacts: the split and the item table, written once and read by every
later stage (instead of re-parsing the raw files each time)."""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from rqsid_jax.data.dataset import ItemTable, Split

SPLIT = "split.npz"
ITEMS = "items.json"
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
