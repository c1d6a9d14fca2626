"""Item embeddings [N, D] float32, cached in the workdir.

Methods: 'wordllama' (offline, weights ship in the wheel), 'sentence_transformers'
(TIGER used Sentence-T5; needs the package and local weights), 'npy' (user file), and
'collaborative' (for datasets without text: PPMI of item co-occurrence in the
*training parts only*, factorised by truncated SVD; validation/test targets never enter).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from rqsid_jax.data.dataset import SequenceDataset, Split, validate_embeddings
from rqsid_jax.data.text import item_field_texts, item_texts
from rqsid_jax.errors import ConfigError, DataError

METHODS = ("auto", "wordllama", "sentence_transformers", "npy", "collaborative", "given")

CACHE = "embeddings.npy"  # the embeddings stage's artifact (workdir.EMBEDDINGS)


def wordllama_embed(texts: list[str], dim: int = 256) -> np.ndarray:
    """Text embeddings [len(texts), dim] from wordllama's bundled weights (offline)."""
    import wordllama
    from wordllama import WordLlama

    # The wheel ships the 256-d weights; smaller dims are Matryoshka truncations of them.
    if not 1 <= dim <= 256:
        raise ConfigError(f"embeddings.dim={dim}: wordllama gives at most 256 dimensions")
    wl = WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True,
                        trunc_dim=dim if dim < 256 else None)
    return np.asarray(wl.embed(texts), np.float32)


def sentence_transformers_embed(texts: list[str], model_name: str) -> np.ndarray:
    """Text embeddings from a sentence-transformers model (needs the package and its weights)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError("embeddings.method='sentence_transformers' needs the sentence-transformers package "
                          "(pip install sentence-transformers) and local weights; or use method='wordllama'")
    try:
        model = SentenceTransformer(model_name, local_files_only=True)
    except Exception as e:  # the library raises several types for missing weights
        raise ConfigError(f"sentence-transformers model '{model_name}' is not available locally "
                          f"({type(e).__name__}); download it first or use method='wordllama'")
    return np.asarray(model.encode(texts, batch_size=256, show_progress_bar=False), np.float32)


def collaborative_embed(train: list[np.ndarray], num_items: int, dim: int = 64, window: int = 3,
                        seed: int = 0) -> np.ndarray:
    """Item vectors from co-occurrence within `window` positions in the training sequences."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    rows, cols = [], []
    for s in train:
        for off in range(1, window + 1):
            if len(s) > off:
                rows.append(s[:-off]); cols.append(s[off:])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int32)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int32)
    co = sp.coo_matrix((np.ones(r.size * 2, np.float64), (np.r_[r, c], np.r_[c, r])),
                       shape=(num_items, num_items)).tocsr()
    co.sum_duplicates()
    total = co.sum()
    deg = np.asarray(co.sum(axis=1)).ravel()
    co = co.tocoo()
    # Positive PMI: log(p(i,j) / p(i)p(j)), clipped at 0.
    pmi = np.log(co.data * total / (deg[co.row] * deg[co.col]))
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (co.row[keep], co.col[keep])), shape=co.shape)
    k = min(dim, num_items - 2)
    rng = np.random.default_rng(seed)
    u, s, _ = svds(ppmi, k=k, v0=rng.standard_normal(num_items), random_state=seed)
    emb = (u * np.sqrt(s)).astype(np.float32)
    # Items never seen in a training part have no evidence; small seeded noise keeps them distinct.
    cold = deg == 0
    if cold.any():
        scale = float(np.abs(emb[~cold]).mean()) if (~cold).any() else 1.0
        emb[cold] = rng.standard_normal((int(cold.sum()), emb.shape[1])).astype(np.float32) * 0.1 * scale
        logging.info("collaborative embeddings: %d items with no training co-occurrence", int(cold.sum()))
    return emb


def _cache_key(method: str, payload: dict) -> str:
    h = hashlib.sha256(json.dumps({"method": method, **payload}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def item_embeddings(dataset: SequenceDataset, split: Optional[Split], method: str = "auto",
                    cache_dir: Optional[str] = None, model_name: str = "sentence-transformers/sentence-t5-base",
                    npy_path: str = "", dim: int = 256, seed: int = 0, text_fields: str = "separate") -> np.ndarray:
    """Returns [num_items, D] float32 embeddings, reusing `<cache_dir>/embeddings.npy` when its key matches.

    text_fields='separate' embeds the title and the attributes (brand, categories, price) on
    their own and concatenates them (2*dim for wordllama); 'joined' embeds one TIGER-style string.
    """
    if method not in METHODS:
        raise ConfigError(f"embeddings.method='{method}' is not one of {METHODS}")
    if method == "auto":
        if dataset.embeddings is not None:
            method = "given"
        elif dataset.items.has_text():
            method = "wordllama"
        else:
            method = "collaborative"
            logging.warning("%s: no item text (metadata missing or empty): embeddings.method=auto uses "
                            "collaborative embeddings from the training sequences", dataset.name)
    if method == "given":
        if dataset.embeddings is None:
            raise ConfigError("embeddings.method='given' needs the user data form (interactions + .npy)")
        payload = {"given": hashlib.sha256(np.ascontiguousarray(dataset.embeddings, np.float32).tobytes()).hexdigest()}
    elif method in ("wordllama", "sentence_transformers"):
        if not dataset.items.has_text():
            raise DataError(f"{dataset.name}: embeddings.method='{method}' needs item text, but the item "
                            "metadata is missing or empty (use 'collaborative' or supply the metadata file)")
        if text_fields not in ("separate", "joined"):
            raise ConfigError(f"embeddings.text_fields='{text_fields}' is not 'separate' or 'joined'")
        fields = list(item_field_texts(dataset.items)) if text_fields == "separate" else [item_texts(dataset.items)]
        payload = {"texts": hashlib.sha256("\n".join("\n".join(f) for f in fields).encode()).hexdigest(),
                   "fields": text_fields,
                   "model": model_name if method == "sentence_transformers" else f"wordllama-{dim}"}
    elif method == "npy":
        if not npy_path:
            raise ConfigError("embeddings.method='npy' needs embeddings.npy_path")
        payload = {"path": os.path.abspath(npy_path), "mtime": os.path.getmtime(npy_path) if os.path.exists(npy_path) else 0}
    else:
        if split is None:
            raise ConfigError("collaborative embeddings need the training split")
        h = hashlib.sha256()
        for s in split.train:
            h.update(s.tobytes()); h.update(b"|")
        payload = {"train": h.hexdigest(), "dim": dim, "seed": seed}
    key = _cache_key(method, payload)
    if cache_dir:
        path, meta_path = os.path.join(cache_dir, CACHE), os.path.join(cache_dir, "embeddings.json")
        if os.path.exists(path) and os.path.exists(meta_path):
            with open(meta_path) as f:
                if json.load(f).get("key") == key:
                    logging.info("embeddings: reusing cache %s", path)
                    return np.load(path, allow_pickle=False)
    if method == "given":
        emb = np.asarray(dataset.embeddings, np.float32)
    elif method == "wordllama":
        emb = np.concatenate([wordllama_embed(f, dim) for f in fields], axis=1)
    elif method == "sentence_transformers":
        emb = np.concatenate([sentence_transformers_embed(f, model_name) for f in fields], axis=1)
    elif method == "npy":
        if not os.path.exists(npy_path):
            raise DataError(f"{npy_path}: file not found (expected a .npy float array [items, dim])")
        try:
            emb = np.load(npy_path, allow_pickle=False)
        except ValueError as e:
            raise DataError(f"{npy_path}: not a plain numeric .npy array ({e})")
        emb = np.asarray(emb, np.float32)
    else:
        emb = collaborative_embed(split.train, dataset.num_items, dim=min(dim, 64), seed=seed)
    validate_embeddings(emb, dataset.num_items, f"{method} embeddings")
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = os.path.join(cache_dir, "embeddings.tmp.npy")
        np.save(tmp, emb)
        os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache
        with open(meta_path, "w") as f:
            json.dump({"key": key, "method": method, "shape": list(emb.shape)}, f)
    return emb
