"""Readers for the three input forms: raw Amazon 2014, P5-preprocessed, and the user's own files."""
from __future__ import annotations

import ast
import json
import os
import re
from typing import Optional

import numpy as np

from rqsid_jax.data.dataset import ItemTable, SequenceDataset, kcore, validate_embeddings
from rqsid_jax.data.lines import read_records, require_file
from rqsid_jax.data.tiny import ensure_tiny_dataset
from rqsid_jax.errors import DataError

# Short dataset names used in configs -> Amazon 2014 category file names.
CATEGORIES = {
    "beauty": "Beauty",
    "sports": "Sports_and_Outdoors",
    "toys": "Toys_and_Games",
}


def category_of(name: str) -> str:
    """The Amazon category in the raw file names of a dataset name (beauty -> Beauty)."""
    return CATEGORIES.get(name.lower(), name)


# ---------------------------------------------------------------- raw Amazon 2014

def _parse_review(line: str) -> tuple[str, str, int]:
    rec = json.loads(line)
    return str(rec["reviewerID"]), str(rec["asin"]), int(rec["unixReviewTime"])


def _parse_meta(line: str) -> dict:
    """Metadata lines are Python dict literals (not JSON); JSON lines are accepted too.

    ast.literal_eval only evaluates literals, so a hostile file cannot run code.
    """
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        rec = ast.literal_eval(line)
    if not isinstance(rec, dict) or "asin" not in rec:
        raise ValueError("not a metadata record with an 'asin'")
    return rec


def _price(v) -> Optional[float]:
    if v is None or v == "":
        return None
    try:
        return float(str(v).replace("$", "").replace(",", ""))
    except ValueError:
        return None


def read_raw_amazon(reviews_path: str, meta_path: Optional[str] = None, name: str = "amazon",
                    min_count: int = 5) -> SequenceDataset:
    """Raw release: JSON review lines + Python-literal metadata lines (gzipped or not).

    Sequences are ordered by unixReviewTime; ties keep file order (stable sort).
    Users and items are numbered by first appearance in the review file. k-core
    filtering (min_count) is applied; on an already 5-core file it changes nothing.
    """
    require_file(reviews_path, "JSON lines with reviewerID, asin, unixReviewTime (reviews_<Category>_5.json.gz)")
    per_user: dict[str, list[tuple[int, int, str]]] = {}
    for lineno, (user, asin, t) in read_records(reviews_path, _parse_review):
        per_user.setdefault(user, []).append((t, lineno, asin))
    users = list(per_user)
    seqs_asin = [[a for _, _, a in sorted(per_user[u], key=lambda r: (r[0], r[1]))] for u in users]
    if min_count > 1:
        users, seqs_asin = kcore(users, seqs_asin, min_count)
    if not users:
        raise DataError(f"{reviews_path}: no user has {min_count} or more interactions after k-core filtering")
    asin_index: dict[str, int] = {}
    for s in seqs_asin:
        for a in s:
            asin_index.setdefault(a, len(asin_index))
    asins = list(asin_index)
    items = ItemTable.bare(asins, asins)
    if meta_path is not None:
        require_file(meta_path, "Python dict literal (or JSON) lines with asin, title, brand, categories, price")
        for _, rec in read_records(meta_path, _parse_meta):
            i = asin_index.get(str(rec["asin"]))
            if i is None:
                continue
            items.titles[i] = str(rec.get("title") or "")
            items.brands[i] = str(rec.get("brand") or "")
            cats = rec.get("categories") or []
            flat = [c for path in cats for c in (path if isinstance(path, list) else [path])]
            items.categories[i] = list(dict.fromkeys(str(c) for c in flat))
            items.prices[i] = _price(rec.get("price"))
    seqs = [np.array([asin_index[a] for a in s], np.int32) for s in seqs_asin]
    return SequenceDataset(name=name, items=items, user_ids=users, sequences=seqs)


# ---------------------------------------------------------------- P5 preprocessed

def read_p5(directory: str, name: Optional[str] = None) -> SequenceDataset:
    """`sequential_data.txt` (user item item ..., 1-based ids, oldest first), `datamaps.json`,
    optional `item_meta.jsonl` (item_id, asin, title, attributes = [brand, categories...])."""
    seq_path = require_file(os.path.join(directory, "sequential_data.txt"),
                            "one user per line: 'user_id item_id item_id ...' (P5 format)")
    name = name or os.path.basename(os.path.normpath(directory))
    id2asin: dict[str, str] = {}
    maps_path = os.path.join(directory, "datamaps.json")
    if os.path.exists(maps_path):
        try:
            with open(maps_path, encoding="utf-8") as f:
                id2asin = {str(k): str(v) for k, v in json.load(f)["id2item"].items()}
        except (ValueError, KeyError, AttributeError, TypeError) as e:
            raise DataError(f"{maps_path}: not a P5 datamaps file with 'id2item' ({type(e).__name__}: {e})")

    def parse(line: str) -> tuple[str, list[int]]:
        parts = line.split()
        if len(parts) < 2:
            raise ValueError("a user with no items")
        return parts[0], [int(p) for p in parts[1:]]

    rows = list(read_records(seq_path, parse))
    if id2asin:
        item_ids = sorted(id2asin, key=int)
    else:
        item_ids = [str(i) for i in sorted({it for _, (_, s) in rows for it in s})]
    index = {int(i): k for k, i in enumerate(item_ids)}
    users, seqs = [], []
    for lineno, (user, s) in rows:
        try:
            seqs.append(np.array([index[i] for i in s], np.int32))
        except KeyError as e:
            raise DataError(f"{seq_path}:{lineno}: item id {e.args[0]} is not in {maps_path}")
        users.append(user)
    items = ItemTable.bare(item_ids, [id2asin.get(i, i) for i in item_ids])
    meta_path = os.path.join(directory, "item_meta.jsonl")
    if os.path.exists(meta_path):
        for lineno, rec in read_records(meta_path, _meta_record):
            k = index.get(rec["item_id"])
            if k is None:
                raise DataError(f"{meta_path}:{lineno}: item_id {rec['item_id']} is not in the dataset")
            attrs = [str(a) for a in rec.get("attributes", [])]
            items.titles[k] = str(rec.get("title") or "")
            # Attributes are brand first, then categories; "Unknown" is the source's missing brand.
            items.brands[k] = attrs[0] if attrs and attrs[0] != "Unknown" else ""
            items.categories[k] = attrs[1:]
    return SequenceDataset(name=name, items=items, user_ids=users, sequences=seqs)


def _meta_record(line: str) -> dict:
    """One item_meta.jsonl record; a malformed one raises ValueError (a bad line, named)."""
    rec = json.loads(line)
    if not isinstance(rec, dict):
        raise ValueError(f"not a JSON object but {type(rec).__name__}")
    if "item_id" not in rec:
        raise ValueError("no 'item_id'")
    if isinstance(rec["item_id"], bool) or not isinstance(rec["item_id"], (int, str)):
        raise ValueError(f"item_id {rec['item_id']!r} is not an integer")
    rec["item_id"] = int(rec["item_id"])  # ValueError for a non-integer string
    if not isinstance(rec.get("attributes", []), list):
        raise ValueError("'attributes' is not a list")
    return rec


# ---------------------------------------------------------------- the user's own files

_SPLIT = re.compile(r"[,\t ]+")


def read_user_interactions(interactions_path: str, embeddings_path: str, name: str = "custom",
                           min_count: int = 0) -> SequenceDataset:
    """`user,item[,timestamp]` lines (comma, tab or space separated; an optional header) where
    item is a 0-based row of `embeddings_path` (.npy, float [N, D]). Without timestamps the file
    order is the chronological order."""
    require_file(embeddings_path, "a .npy float array [items, dim]")
    try:
        emb = np.load(embeddings_path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{embeddings_path}: not a plain numeric .npy array ({e})")
    if not isinstance(emb, np.ndarray) or emb.ndim != 2 or not np.issubdtype(emb.dtype, np.number):
        what = f"shape {emb.shape}, dtype {emb.dtype}" if isinstance(emb, np.ndarray) else type(emb).__name__
        raise DataError(f"{embeddings_path}: expected a numeric [items, dim] array, got {what}")
    n = emb.shape[0]
    require_file(interactions_path, "lines 'user,item[,timestamp]' with item a 0-based embedding row")

    def parse(line: str):
        parts = _SPLIT.split(line)
        if len(parts) not in (2, 3):
            raise ValueError(f"expected 2 or 3 fields, got {len(parts)}")
        return parts[0], int(parts[1]), float(parts[2]) if len(parts) == 3 else None

    per_user: dict[str, list[tuple[float, int, int]]] = {}
    for lineno, rec in read_records(interactions_path, _header_tolerant(parse)):
        if rec is None:  # header
            continue
        user, item, t = rec
        if not 0 <= item < n:
            raise DataError(f"{interactions_path}:{lineno}: item {item} out of range [0, {n}) of {embeddings_path}")
        per_user.setdefault(user, []).append((t if t is not None else 0.0, lineno, item))
    users = list(per_user)
    seqs = [[it for _, _, it in sorted(per_user[u], key=lambda r: (r[0], r[1]))] for u in users]
    if min_count > 1:
        users, seqs = kcore(users, seqs, min_count)
    emb = validate_embeddings(np.asarray(emb, np.float32), n, embeddings_path)
    items = ItemTable.bare([str(i) for i in range(n)])
    return SequenceDataset(name=name, items=items, user_ids=users,
                           sequences=[np.array(s, np.int32) for s in seqs], embeddings=emb)


def _header_tolerant(parse):
    seen = {"first": True}

    def wrapped(line):
        if seen["first"]:
            seen["first"] = False
            try:
                return parse(line)
            except ValueError:
                return None  # a header line
        return parse(line)

    return wrapped


# ---------------------------------------------------------------- dispatch

def _resolve(name: str, data_dir: str, fmt: str, interactions: str) -> tuple[str, str]:
    """(format, base directory) that load_dataset reads `name` from."""
    if name == "tiny" and not data_dir:  # configs/tiny.py: generated on first use, not when loaded
        data_dir = ensure_tiny_dataset()
    p5_dir = os.path.join(data_dir, name)
    cat = category_of(name)
    reviews = os.path.join(data_dir, f"reviews_{cat}_5.json.gz")
    if fmt == "auto":
        if interactions:
            fmt = "user"
        elif os.path.exists(os.path.join(p5_dir, "sequential_data.txt")):
            fmt = "p5"
        elif os.path.exists(reviews) or os.path.exists(os.path.join(p5_dir, f"reviews_{cat}_5.json.gz")):
            fmt = "raw"
        else:
            raise DataError(
                f"{data_dir}: no data for '{name}': expected {p5_dir}/sequential_data.txt (P5 form) "
                f"or {reviews} (+ meta_{cat}.json.gz) (raw Amazon 2014)")
    if fmt == "p5":
        return fmt, p5_dir
    if fmt == "raw":
        return fmt, data_dir if os.path.exists(reviews) else p5_dir
    if fmt == "user":
        return fmt, ""
    raise DataError(f"unknown data format '{fmt}' (expected auto, p5, raw or user)")


def input_files(name: str, data_dir: str, fmt: str = "auto", interactions: str = "",
                embeddings: str = "") -> list[str]:
    """Every file load_dataset would read for these arguments (those that exist)."""
    fmt, base = _resolve(name, data_dir, fmt, interactions)
    cat = category_of(name)
    if fmt == "p5":
        paths = [os.path.join(base, f) for f in ("sequential_data.txt", "datamaps.json", "item_meta.jsonl")]
    elif fmt == "raw":
        paths = [os.path.join(base, f"reviews_{cat}_5.json.gz"), os.path.join(base, f"meta_{cat}.json.gz")]
    else:
        paths = [interactions] + ([embeddings] if embeddings else [])
    return [p for p in paths if os.path.exists(p)]


def load_dataset(name: str, data_dir: str, fmt: str = "auto", interactions: str = "",
                 embeddings: str = "", min_count: int = 5) -> SequenceDataset:
    """Loads `name` from `data_dir` in format 'p5', 'raw', 'user' or 'auto' (detect by files)."""
    fmt, base = _resolve(name, data_dir, fmt, interactions)
    if fmt == "p5":
        return read_p5(base, name=name)
    if fmt == "raw":
        cat = category_of(name)
        meta = os.path.join(base, f"meta_{cat}.json.gz")
        return read_raw_amazon(os.path.join(base, f"reviews_{cat}_5.json.gz"),
                               meta if os.path.exists(meta) else None, name=name, min_count=min_count)
    return read_user_interactions(interactions, embeddings, name=name, min_count=0)
