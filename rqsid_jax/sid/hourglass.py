"""Hourglass analysis of RQ semantic IDs (Kuai et al., EMNLP 2024, sections 4-5).

All functions take codes [N, L] (0-based code per level) and the codebook size M.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np


def token_counts(codes: np.ndarray, codebook_size: int) -> np.ndarray:
    """[L, M] number of items holding each token at each layer (negative = absent, not counted)."""
    codes = np.asarray(codes)
    return np.stack([np.bincount(codes[:, l][codes[:, l] >= 0], minlength=codebook_size)
                     for l in range(codes.shape[1])])


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy in bits of a count vector."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def gini(counts: np.ndarray) -> float:
    """Gini coefficient over all M tokens (unused tokens count as 0): 0 even, -> 1 concentrated."""
    x = np.sort(np.asarray(counts, np.float64))
    n = x.size
    if x.sum() == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * x) / (n * x.sum()))


def top_share(counts: np.ndarray, fraction: float) -> float:
    """Share of items held by the most frequent ceil(fraction * M) tokens."""
    k = max(1, math.ceil(fraction * counts.size))
    return float(np.sort(counts)[::-1][:k].sum() / counts.sum())


def layer_metrics(codes: np.ndarray, codebook_size: int) -> list[dict]:
    """Per layer: entropy (bits, normalised), Gini, std of counts, utilisation, perplexity, top shares."""
    out = []
    for l, c in enumerate(token_counts(codes, codebook_size)):
        h = entropy_bits(c)
        out.append({
            "layer": l + 1,
            "entropy_bits": h,
            "normalized_entropy": h / math.log2(codebook_size),
            "gini": gini(c),
            "count_std": float(c.std()),
            "utilization": float((c > 0).mean()),
            "perplexity": float(2 ** h),
            "top1pct_share": top_share(c, 0.01),
            "top10pct_share": top_share(c, 0.10),
            "max_count": int(c.max()),
        })
    return out


def path_sparsity(codes: np.ndarray, codebook_size: int) -> list[dict]:
    """Distinct prefixes at each depth against the M^depth possible, and branching per parent."""
    codes = np.asarray(codes)
    out = []
    for d in range(1, codes.shape[1] + 1):
        prefixes = np.unique(codes[:, :d], axis=0)
        row = {"depth": d, "distinct_prefixes": int(len(prefixes)),
               "possible": int(codebook_size ** d),
               "occupancy": float(len(prefixes) / codebook_size ** d)}
        if d >= 2:
            # children used per parent prefix of length d-1
            _, children = np.unique(prefixes[:, : d - 1], axis=0, return_counts=True)
            row.update(branching_mean=float(children.mean()), branching_max=int(children.max()),
                       branching_min=int(children.min()),
                       branching_hist={int(k): int(v) for k, v in enumerate(np.bincount(children)) if v})
        out.append(row)
    return out


def head_tail_split(codes: np.ndarray, codebook_size: int, head_share: float = 0.5, layer: int = 1):
    """Head tokens of a layer (0-based `layer`, default layer 2): the most frequent tokens that
    together hold at least `head_share` of the items. Returns (head_tokens, is_head [N] bool)."""
    counts = np.bincount(np.asarray(codes)[:, layer], minlength=codebook_size)
    order = np.argsort(-counts, kind="stable")
    cum = np.cumsum(counts[order]) / counts.sum()
    k = int(np.searchsorted(cum, head_share) + 1)
    head = np.sort(order[:k])
    return head, np.isin(np.asarray(codes)[:, layer], head)


def residual_norms(residuals: np.ndarray) -> list[dict]:
    """residuals [L, N, D] (input of each level): norm mean and quantiles per layer (paper Fig. 4)."""
    out = []
    for l, r in enumerate(np.asarray(residuals)):
        n = np.linalg.norm(r, axis=-1)
        q = np.quantile(n, [0.05, 0.25, 0.5, 0.75, 0.95])
        out.append({"layer": l + 1, "mean": float(n.mean()), "std": float(n.std()),
                    **{f"q{int(p * 100):02d}": float(v) for p, v in zip([0.05, 0.25, 0.5, 0.75, 0.95], q)}})
    return out


def is_hourglass(metrics: list[dict], entropy_margin: float = 0.01, gini_margin: float = 0.01) -> bool:
    """Layer 2 is clearly more concentrated than both neighbours: normalised entropy lower by
    more than `entropy_margin` and Gini higher by more than `gini_margin` (sampling noise on
    near-uniform layers differs by less than that)."""
    if len(metrics) < 3:
        return False
    m1, m2, m3 = metrics[0], metrics[1], metrics[2]
    return (m2["normalized_entropy"] < min(m1["normalized_entropy"], m3["normalized_entropy"]) - entropy_margin
            and m2["gini"] > max(m1["gini"], m3["gini"]) + gini_margin)


def analyze(codes: np.ndarray, codebook_size: int, residuals: Optional[np.ndarray] = None,
            head_share: float = 0.5) -> dict:
    """Per-level metrics, the hourglass verdict, paths and the head/tail split of codes."""
    head, is_head = head_tail_split(codes, codebook_size, head_share)
    rep = {"items": int(len(codes)), "levels": int(np.asarray(codes).shape[1]), "codebook_size": codebook_size,
           "layers": layer_metrics(codes, codebook_size),
           "paths": path_sparsity(codes, codebook_size),
           "head_tail": {"head_share": head_share, "head_tokens": head.tolist(),
                         "num_head_tokens": int(head.size), "head_items": int(is_head.sum()),
                         "tail_items": int((~is_head).sum())}}
    rep["hourglass"] = is_hourglass(rep["layers"])
    if residuals is not None:
        rep["residual_norms"] = residual_norms(residuals)
    return rep
