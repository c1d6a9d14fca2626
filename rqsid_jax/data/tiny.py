"""A small deterministic dataset in the raw Amazon 2014 format, for smoke runs, tests and notebooks.

Users prefer one of a few item "themes" (brands/categories), so sequences carry signal a
retriever can learn. Written as gzipped JSON reviews + Python-literal metadata, like the release.
"""
from __future__ import annotations

import gzip
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


def write_tiny_dataset(directory: str, users: int = 400, items_per_theme: int = 40, seed: int = 0) -> str:
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for t, (brand, cat, nouns) in enumerate(THEMES):
        for k in range(items_per_theme):
            items.append((f"T{t}I{k:03d}", t, f"{brand} {COLORS[k % 10]} {nouns[k % 4]} no. {k}", brand, cat))
    by_theme = [[i for i, it in enumerate(items) if it[1] == t] for t in range(len(THEMES))]
    with gzip.open(os.path.join(directory, "reviews_tiny_5.json.gz"), "wt") as f:
        for u in range(users):
            theme = rng.integers(len(THEMES))
            n = int(rng.integers(5, 13))
            # a random walk through the theme's items: the next item is usually close to the last
            pos = int(rng.integers(items_per_theme))
            for j in range(n):
                pool = by_theme[theme] if rng.random() < 0.85 else by_theme[rng.integers(len(THEMES))]
                pos = (pos + int(rng.integers(1, 4))) % items_per_theme
                asin = items[pool[pos]][0]
                f.write(json.dumps({"reviewerID": f"U{u:04d}", "asin": asin, "unixReviewTime": 1_400_000_000 + j * 86400}) + "\n")
    with gzip.open(os.path.join(directory, "meta_tiny.json.gz"), "wt") as f:
        for asin, _, title, brand, cat in items:
            f.write(repr({"asin": asin, "title": title, "brand": brand, "price": 9.99,
                          "categories": [["Beauty", cat]]}) + "\n")
    return directory


def ensure_tiny_dataset() -> str:
    """Writes the tiny dataset once per machine and returns its directory."""
    d = os.path.join(tempfile.gettempdir(), "rqsid_jax_tiny_v1")
    if not os.path.exists(os.path.join(d, "meta_tiny.json.gz")):
        tmp = tempfile.mkdtemp(prefix="rqsid_tiny_")
        write_tiny_dataset(tmp)
        try:
            os.replace(tmp, d)
        except OSError:  # another process won the race
            pass
    return d
