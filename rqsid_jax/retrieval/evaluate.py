"""Evaluation: constrained beam search over the catalogue, Recall/NDCG@K, head/tail splits,
the given-layer-1 probe, and the unconstrained invalid-ID ratio (paper Figure 5)."""
from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from rqsid_jax.retrieval.beam import DeviceIndex, run_beam
from rqsid_jax.retrieval.input_pipeline import Examples
from rqsid_jax.retrieval.metrics import KS, recall_ndcg
from rqsid_jax.retrieval.sid_vocab import cut_at_eos


def generate(r, params, ex: Examples, beam: int, constrained: bool = True, batch_size: int = 256,
             given_first: bool = False, progress: bool = True):
    """Beam search for every example. Returns (items [E, beam], tokens [E, beam, T], scores [E, beam])."""
    col = r.collator(ex, batch_size)
    index = DeviceIndex.from_index(r.index)
    n = len(ex)
    items = np.full((n, beam), -1, np.int64)
    tokens = np.zeros((n, beam, r.index.depth), np.int32)
    scores = np.zeros((n, beam), np.float32)
    for idx in tqdm(col.plan(0, 0, shuffle=False), desc="beam search", disable=not progress):
        b = col(idx)
        first = jnp.asarray(r.item_tok[np.maximum(b["target_item"], 0), 0]) if given_first else None
        t, s, it = run_beam(r.graphdef, params, jnp.asarray(b["encoder"]), index, beam, constrained, first)
        real = idx >= 0
        items[idx[real]] = np.asarray(it)[real]
        tokens[idx[real]] = np.asarray(t)[real]
        scores[idx[real]] = np.asarray(s)[real]
    return items, tokens, scores


def evaluate(r, params, ex: Examples, beam: int = 50, ks: Sequence[int] = KS, batch_size: int = 256,
             head_tokens: Optional[np.ndarray] = None, layer2_codes: Optional[np.ndarray] = None,
             given_first: bool = False, progress: bool = True) -> dict:
    """Constrained beam search, Recall/NDCG@K, and head/tail splits when given."""
    items, _, _ = generate(r, params, ex, beam, True, batch_size, given_first, progress)
    out = {"metrics": recall_ndcg(items, ex.target, [k for k in ks if k <= beam]), "predictions": items}
    if head_tokens is not None and layer2_codes is not None:
        is_head = np.isin(layer2_codes[ex.target], head_tokens)
        out["head"] = recall_ndcg(items, ex.target, [k for k in ks if k <= beam], is_head)
        out["tail"] = recall_ndcg(items, ex.target, [k for k in ks if k <= beam], ~is_head)
    return out


def valid_mask(index, tokens: np.ndarray) -> np.ndarray:
    """[B, beam] whether each decoded sequence [B, beam, T], cut at its first EOS, is a catalogue SID."""
    tokens = cut_at_eos(tokens)
    valid = np.zeros(tokens.shape[:2], bool)
    for i in range(tokens.shape[0]):
        for j in range(tokens.shape[1]):
            valid[i, j] = index.lookup(tokens[i, j]) >= 0
    return valid


def invalid_ratio(r, params, ex: Examples, beam: int = 50, ks: Sequence[int] = KS, batch_size: int = 256,
                  progress: bool = True) -> dict:
    """Unconstrained beam search: share of the top-k generated sequences that are not a catalogue SID."""
    _, tokens, _ = generate(r, params, ex, beam, False, batch_size, progress=progress)
    valid = valid_mask(r.index, tokens)
    return {f"invalid@{k}": float(1.0 - valid[:, :k].mean()) for k in ks if k <= beam}


def save_test_predictions(path: str, split, item_ids, predictions: np.ndarray, target_rows: np.ndarray,
                          k: int = 50) -> None:
    """The workdir's `predictions_test.npz` (every model's): user ids, the top-k item ids and
    rows per test user ("" / -1 where fewer than k), and the target's id and row, so metrics
    can be recomputed without this library."""
    ids = np.asarray(item_ids)
    pred = np.asarray(predictions)[:, :k]
    np.savez(path, user_ids=np.asarray(split.user_ids), top50_item_ids=np.where(pred >= 0, ids[np.maximum(pred, 0)], ""),
             target_item_id=ids[target_rows], top50_rows=pred, target_row=target_rows)
