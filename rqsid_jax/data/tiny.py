"""A small deterministic dataset in the raw Amazon 2014 format, for smoke runs, tests and notebooks.

Users prefer one of a few item "themes" (brands/categories), so sequences carry signal a
retriever can learn. Written as gzipped JSON reviews + Python-literal metadata, like the release.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import tempfile

import numpy as np

THEMES = [("Acme", "Lips", ["gloss", "balm", "stain", "liner"]),
          ("Lumo", "Eyes", ["mascara", "shadow", "liner", "primer"]),
          ("Verde", "Skin", ["serum", "cream", "toner", "mask"]),
          ("Nailco", "Nails", ["polish", "topcoat", "remover", "file"]),
          ("Aqua", "Hair", ["shampoo", "conditioner", "oil", "spray"])]
COLORS = ["red", "pink", "nude", "coral", "plum", "gold", "black", "clear", "blue", "rose"]


def _gzip_text(lines: list[str]) -> bytes:
    """Gzip bytes with a fixed header time: the same dataset is the same bytes on every machine."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
        f.write("".join(line + "\n" for line in lines).encode("utf-8"))
    return buf.getvalue()


def tiny_dataset_files(users: int = 400, items_per_theme: int = 40, seed: int = 0) -> dict[str, bytes]:
    """{file name: bytes} of the tiny dataset, deterministic in its arguments."""
    rng = np.random.default_rng(seed)
    items = []
    for t, (brand, cat, nouns) in enumerate(THEMES):
        for k in range(items_per_theme):
            items.append((f"T{t}I{k:03d}", t, f"{brand} {COLORS[k % 10]} {nouns[k % 4]} no. {k}", brand, cat))
    by_theme = [[i for i, it in enumerate(items) if it[1] == t] for t in range(len(THEMES))]
    reviews = []
    for u in range(users):
        theme = rng.integers(len(THEMES))
        n = int(rng.integers(5, 13))
        # a random walk through the theme's items: the next item is usually close to the last
        pos = int(rng.integers(items_per_theme))
        for j in range(n):
            pool = by_theme[theme] if rng.random() < 0.85 else by_theme[rng.integers(len(THEMES))]
            pos = (pos + int(rng.integers(1, 4))) % items_per_theme
            reviews.append(json.dumps({"reviewerID": f"U{u:04d}", "asin": items[pool[pos]][0],
                                       "unixReviewTime": 1_400_000_000 + j * 86400}))
    meta = [repr({"asin": asin, "title": title, "brand": brand, "price": 9.99, "categories": [["Beauty", cat]]})
            for asin, _, title, brand, cat in items]
    return {"reviews_tiny_5.json.gz": _gzip_text(reviews), "meta_tiny.json.gz": _gzip_text(meta)}


def write_tiny_dataset(directory: str, **kw) -> str:
    """Writes (or repairs) the tiny dataset in `directory`: a file whose bytes differ from the
    generated ones is replaced atomically, so a stale or tampered copy is never trusted."""
    os.makedirs(directory, exist_ok=True)
    for name, data in tiny_dataset_files(**kw).items():
        path = os.path.join(directory, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                if f.read() == data:
                    continue
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return directory


def ensure_tiny_dataset() -> str:
    """The tiny dataset in this user's cache directory (a stable path, so pipeline fingerprints
    hold across runs), checked byte for byte against a fresh generation on every call."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return write_tiny_dataset(os.path.join(cache, "rqsid_jax", "tiny_v2"))
