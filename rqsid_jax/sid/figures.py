"""Hourglass figures (PNG): token occupancy and flows between layers, rank-frequency, residual norms."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # headless: CI and TPU VMs have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rqsid_jax.sid.hourglass import token_counts  # noqa: E402


def hourglass_figure(codes: np.ndarray, codebook_size: int, path: str, top: int = 24, title: str = "") -> str:
    """Paper Figs. 1-2: each layer's `top` most frequent tokens as nodes sized by item count,
    edges between consecutive layers drawn with width by the number of items on that path.
    The side panel shows the share of items held by each layer's top tokens (the waist)."""
    codes = np.asarray(codes)
    L = codes.shape[1]
    counts = token_counts(codes, codebook_size)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 6), gridspec_kw={"width_ratios": [3, 1]})
    ranks = []
    for l in range(L):
        order = np.argsort(-counts[l], kind="stable")[:top]
        ranks.append({int(t): i for i, t in enumerate(order)})
        y = -np.arange(len(order))
        size = 2000 * counts[l][order] / counts.max()
        ax.scatter(np.full(len(order), l), y, s=size, alpha=0.6, color=f"C{l}", zorder=3)
    for l in range(L - 1):
        pairs, n = np.unique(codes[:, l:l + 2], axis=0, return_counts=True)
        keep = [(a, b, c) for (a, b), c in zip(pairs, n) if a in ranks[l] and b in ranks[l + 1]]
        if not keep:
            continue
        cmax = max(c for *_, c in keep)
        for a, b, c in keep:
            ax.plot([l, l + 1], [-ranks[l][a], -ranks[l + 1][b]], color="grey",
                    lw=0.3 + 4 * c / cmax, alpha=0.15 + 0.6 * c / cmax, zorder=1)
    ax.set_xticks(range(L), [f"layer {l + 1}" for l in range(L)])
    ax.set_yticks([])
    ax.set_title(title or f"Top-{top} tokens per layer and the paths between them")
    shares = [np.sort(c)[::-1][: max(1, codebook_size // 10)].sum() / c.sum() for c in counts]
    ax2.barh([f"layer {l + 1}" for l in range(L)][::-1], shares[::-1], color=[f"C{l}" for l in range(L)][::-1])
    ax2.set_xlabel("share of items in top 10% tokens")
    ax2.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rank_frequency_figure(codes: np.ndarray, codebook_size: int, path: str) -> str:
    """Token frequency against rank per level, log-log; returns the path."""
    counts = token_counts(codes, codebook_size)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for l, c in enumerate(counts):
        c = np.sort(c[c > 0])[::-1]
        ax.loglog(np.arange(1, c.size + 1), c, label=f"layer {l + 1}")
    ax.set_xlabel("token rank")
    ax.set_ylabel("items")
    ax.set_title("Rank-frequency of tokens per layer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def residual_norm_figure(residuals: np.ndarray, path: str) -> str:
    """Box plot of residual norms per level; returns the path."""
    norms = [np.linalg.norm(r, axis=-1) for r in np.asarray(residuals)]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.boxplot(norms, showfliers=False)
    ax.set_xticks(range(1, len(norms) + 1), [f"layer {l + 1}" for l in range(len(norms))])
    ax.set_ylabel("residual norm (input of the layer)")
    ax.set_title("Residual norms per layer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def all_figures(codes, codebook_size, directory, residuals=None, prefix="") -> dict:
    """Every hourglass figure of `codes` into `directory`; name -> path."""
    os.makedirs(directory, exist_ok=True)
    out = {"hourglass": hourglass_figure(codes, codebook_size, os.path.join(directory, f"{prefix}hourglass.png")),
           "rank_frequency": rank_frequency_figure(codes, codebook_size,
                                                   os.path.join(directory, f"{prefix}rank_frequency.png"))}
    if residuals is not None:
        out["residual_norms"] = residual_norm_figure(residuals, os.path.join(directory, f"{prefix}residual_norms.png"))
    return out
