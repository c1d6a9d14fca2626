"""Recall@K and NDCG@K over the full catalogue from top-K predicted item ids."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

KS = (1, 3, 5, 10, 20, 30, 50)


def hit_ranks(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of the target in each row of predictions [U, K], or -1 when absent."""
    hit = predictions == targets[:, None]
    return np.where(hit.any(1), hit.argmax(1), -1)


def recall_ndcg(predictions: np.ndarray, targets: np.ndarray, ks: Sequence[int] = KS,
                mask: Optional[np.ndarray] = None) -> dict:
    """One relevant item per user: Recall@K = hit in top K; NDCG@K = 1 / log2(rank + 2) if hit."""
    r = hit_ranks(np.asarray(predictions), np.asarray(targets))
    if mask is not None:
        r = r[mask]
    out = {"users": int(r.size)}
    for k in ks:
        if k > predictions.shape[1]:
            continue
        hit = (r >= 0) & (r < k)
        out[f"recall@{k}"] = float(hit.mean()) if r.size else 0.0
        gain = 1.0 / np.log2(np.maximum(r, 0) + 2.0)
        out[f"ndcg@{k}"] = float(np.where(hit, gain, 0.0).mean()) if r.size else 0.0
    return out


def per_user(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Per-user Recall@K (0/1) or NDCG@K ('recall@10', 'ndcg@10') from hit ranks."""
    kind, k = metric.split("@")
    hit = (ranks >= 0) & (ranks < int(k))
    if kind == "recall":
        return hit.astype(float)
    return np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)


def mean_se(x: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error."""
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(x.size))


def bootstrap_interval(x: np.ndarray, resamples: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of x over users (for a paired difference, x is
    the per-user difference: the same users resampled for both sides)."""
    rng = np.random.default_rng(seed)
    return percentile_interval(np.array([x[rng.integers(0, x.size, x.size)].mean() for _ in range(resamples)]),
                               level)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` range of bootstrap samples."""
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)
