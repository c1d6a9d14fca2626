"""Paper section 4.2: uniform vs long-tailed (Zipf cluster sizes) inputs through the same RQ."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rqsid_jax.quantization.kernels import residual_encode
from rqsid_jax.quantization.kmeans import rq_kmeans
from rqsid_jax.sid.hourglass import is_hourglass, layer_metrics, residual_norms


def make_inputs(kind: str, n: int, dim: int, clusters: int, zipf_a: float, seed: int) -> np.ndarray:
    """Uniform or long-tailed (Zipf-weighted clusters) synthetic vectors."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.uniform(-1, 1, (n, dim)).astype(np.float32)
    # Long-tailed: cluster sizes proportional to rank^-a, tight clusters around random centers.
    w = 1.0 / np.arange(1, clusters + 1) ** zipf_a
    which = rng.choice(clusters, size=n, p=w / w.sum())
    centers = rng.uniform(-1, 1, (clusters, dim))
    return (centers[which] + 0.05 * rng.standard_normal((n, dim))).astype(np.float32)


def run(n: int = 20000, dim: int = 32, levels: int = 3, codebook_size: int = 64, clusters: int = 500,
        zipf_a: float = 1.2, seed: int = 0, iters: int = 20) -> dict:
    """RQ-KMeans hourglass metrics on uniform vs long-tailed synthetic data."""
    out = {}
    for kind in ("uniform", "long_tailed"):
        x = jnp.asarray(make_inputs(kind, n, dim, clusters, zipf_a, seed))
        books = rq_kmeans(jax.random.key(seed), x, levels, codebook_size, iters)
        codes, residuals, _ = residual_encode(books, x)
        layers = layer_metrics(np.asarray(codes), codebook_size)
        out[kind] = {"layers": layers, "hourglass": is_hourglass(layers),
                     "residual_norms": residual_norms(np.asarray(residuals))}
    out["setup"] = {"n": n, "dim": dim, "levels": levels, "codebook_size": codebook_size,
                    "clusters": clusters, "zipf_a": zipf_a, "seed": seed, "quantizer": "RQ-KMeans"}
    return out
