"""k-means (k-means++ seeding + Lloyd) in JAX, and RQ-KMeans: residual k-means SIDs without a VAE."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from rqsid_jax.quantization.kernels import nearest_code, squared_distances


@partial(jax.jit, static_argnames=("k",))
def kmeans_plusplus(key: jax.Array, x: jax.Array, k: int) -> jax.Array:
    """k-means++ seeding: each next center drawn with probability proportional to D(x)^2."""
    n = x.shape[0]
    key, sub = jax.random.split(key)
    first = jax.random.randint(sub, (), 0, n)
    centers = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
    d2 = jnp.maximum(squared_distances(x, x[first][None])[:, 0], 0.0)

    def body(i, carry):
        centers, d2, key = carry
        key, sub = jax.random.split(key)
        # log(0) = -inf: points already chosen (d2 = 0) are never drawn again.
        logits = jnp.where(d2 > 0, jnp.log(jnp.where(d2 > 0, d2, 1.0)), -jnp.inf)
        logits = jnp.where(jnp.any(d2 > 0), logits, jnp.zeros_like(d2))  # all identical points
        j = jax.random.categorical(sub, logits)
        c = x[j]
        d2 = jnp.minimum(d2, jnp.maximum(squared_distances(x, c[None])[:, 0], 0.0))
        return centers.at[i].set(c), d2, key

    centers, _, _ = jax.lax.fori_loop(1, k, body, (centers, d2, key))
    return centers


@partial(jax.jit, static_argnames=("iters",))
def lloyd(x: jax.Array, centers: jax.Array, iters: int = 25) -> jax.Array:
    """Lloyd iterations. An empty cluster is re-seeded at the point farthest from its center,
    so every code stays in use."""
    k = centers.shape[0]

    def body(_, centers):
        c = nearest_code(x, centers)
        sums = jax.ops.segment_sum(x, c, num_segments=k)
        counts = jax.ops.segment_sum(jnp.ones_like(c, x.dtype), c, num_segments=k)
        new = sums / jnp.maximum(counts, 1.0)[:, None]
        err = jnp.sum((x - centers[c]) ** 2, axis=-1)
        empty = counts == 0
        rank = jnp.cumsum(empty) - 1
        _, far = jax.lax.top_k(err, k)
        return jnp.where(empty[:, None], x[far[jnp.clip(rank, 0, k - 1)]], new)

    return jax.lax.fori_loop(0, iters, body, centers)


def kmeans(key: jax.Array, x: jax.Array, k: int, iters: int = 25) -> jax.Array:
    """k-means++ then Lloyd. Returns centers [k, D]."""
    if x.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} points, got {x.shape[0]}")
    return lloyd(x, kmeans_plusplus(key, x, k), iters)


def rq_kmeans(key: jax.Array, x: jax.Array, levels: int, codebook_size: int, iters: int = 25) -> jax.Array:
    """Residual k-means: level l clusters the residuals left by levels < l. Returns [L, M, D]."""
    books, r = [], x
    for l in range(levels):
        cb = kmeans(jax.random.fold_in(key, l), r, codebook_size, iters)
        r = r - cb[nearest_code(r, cb)]
        books.append(cb)
    return jnp.stack(books)
