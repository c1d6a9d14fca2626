"""Pure residual-quantization kernels. No state: codebooks are arguments.

Shapes: x [N, D]; codebook [M, D]; codebooks [L, M, D]; codes [N, L] int32.
Distances use ||x||^2 - 2 x.c^T + ||c||^2 at HIGHEST matmul precision: TPUs default
to bf16 passes for float32 matmuls, which changes argmins.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST
DEFAULT_CHUNK = 65536  # items per distance block: bounds the [chunk, M] matrix for any N


def squared_distances(x: jax.Array, codebook: jax.Array) -> jax.Array:
    """[n, D] x [M, D] -> [n, M] squared Euclidean distances (float32-exact matmul)."""
    x2 = jnp.sum(x * x, axis=-1, keepdims=True)
    c2 = jnp.sum(codebook * codebook, axis=-1)
    return x2 - 2.0 * jnp.dot(x, codebook.T, precision=HIGHEST) + c2


def _nearest_block(x, codebook):
    d = squared_distances(x, codebook)
    return jnp.argmin(d, axis=-1).astype(jnp.int32)


def nearest_code(x: jax.Array, codebook: jax.Array, chunk_size: int = DEFAULT_CHUNK) -> jax.Array:
    """Index of the nearest code for every row of x, computed in chunks of rows."""
    n = x.shape[0]
    if n <= chunk_size:
        return _nearest_block(x, codebook)
    # lax.map with batch_size processes chunk_size rows at a time (remainder handled).
    return jax.lax.map(lambda r: _nearest_block(r[None], codebook)[0], x, batch_size=chunk_size)


def residual_encode(codebooks: jax.Array, x: jax.Array, chunk_size: int = DEFAULT_CHUNK):
    """Greedy residual quantization over L levels.

    Returns codes [N, L] int32, residuals [L, N, D] (the input to each level; residuals[0] = x),
    and the quantized reconstruction [N, D].
    """
    def level(r, cb):
        c = nearest_code(r, cb, chunk_size)
        q = jnp.take(cb, c, axis=0)
        return r - q, (c, r)

    final, (codes, residuals) = jax.lax.scan(level, x, codebooks)
    return codes.T, residuals, x - final


def decode(codebooks: jax.Array, codes: jax.Array) -> jax.Array:
    """Sum over levels of the selected code vectors: [N, L] -> [N, D]."""
    L = codebooks.shape[0]
    return sum(jnp.take(codebooks[l], codes[:, l], axis=0) for l in range(L))


def straight_through(z: jax.Array, q: jax.Array) -> jax.Array:
    """Forward value q, gradient identity to z: without it the encoder gets no gradient."""
    return z + jax.lax.stop_gradient(q - z)


def rq_losses(codebooks: jax.Array, z: jax.Array):
    """Residual quantization with per-level VQ losses summed over **all** levels.

    codebook loss = sum_l mean (sg[r_l] - e_l)^2 (moves codes toward residuals);
    commitment    = sum_l mean (r_l - sg[e_l])^2 (keeps the encoder near its codes);
    means are over batch and latent dims, the same units as the reconstruction MSE.
    Returns (quantized, codes [N, L], codebook_loss, commitment_loss).
    """
    def level(r, cb):
        c = _nearest_block(jax.lax.stop_gradient(r), jax.lax.stop_gradient(cb))
        e = jnp.take(cb, c, axis=0)
        cb_loss = jnp.mean((jax.lax.stop_gradient(r) - e) ** 2)
        commit = jnp.mean((r - jax.lax.stop_gradient(e)) ** 2)
        return r - e, (c, e, cb_loss, commit)

    L = codebooks.shape[0]
    r, outs = z, []
    for l in range(L):  # unrolled: L is small and static
        r, o = level(r, codebooks[l])
        outs.append(o)
    codes = jnp.stack([o[0] for o in outs], axis=1)
    quantized = sum(o[1] for o in outs)
    return quantized, codes, sum(o[2] for o in outs), sum(o[3] for o in outs)


@partial(jax.jit, static_argnames=("codebook_size",))
def level_usage(codes: jax.Array, codebook_size: int) -> jax.Array:
    """Per-level code counts [L, M]."""
    return jax.vmap(lambda c: jnp.bincount(c, length=codebook_size), in_axes=1)(codes)


def perplexity(counts: jax.Array) -> jax.Array:
    """exp(entropy) of each level's code distribution; M for perfectly even use, 1 for collapse."""
    p = counts / jnp.maximum(counts.sum(-1, keepdims=True), 1)
    ent = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return jnp.exp(ent)


def revive_dead_codes(codebooks: jax.Array, x: jax.Array, min_usage: int, key: jax.Array,
                      noise: float = 0.01):
    """Re-seeds codes used by fewer than `min_usage` points, level by level.

    Dead codes are moved onto residuals that are far from their current code: points are
    drawn without replacement with probability proportional to their quantization error
    (Gumbel top-k), so the new codes land where the codebook serves the data worst, and
    near-duplicate outliers do not all grab codes. Small noise separates a revived code from
    its seed point. The level is re-assigned with the revived codebook before the next
    level's residuals are formed. Static shapes: jittable. Returns (codebooks, revived [L]).
    """
    L, M, _ = codebooks.shape
    new, revived, r = [], [], x
    for l in range(L):
        cb = codebooks[l]
        k_draw, k_noise = jax.random.split(jax.random.fold_in(key, l))
        c = nearest_code(r, cb)
        counts = jnp.bincount(c, length=M)
        dead = counts < min_usage
        rank = jnp.cumsum(dead) - 1  # rank of each dead code among the dead ones
        err = jnp.sum((r - cb[c]) ** 2, axis=-1)
        k = min(M, r.shape[0])
        gumbel = jax.random.gumbel(k_draw, err.shape)
        _, far = jax.lax.top_k(jnp.log(jnp.maximum(err, 1e-30)) + gumbel, k)
        src = far[jnp.clip(rank, 0, k - 1)]
        eps = noise * jax.random.normal(k_noise, cb.shape) * jnp.std(r)
        use = dead & (rank < k)
        cb = jnp.where(use[:, None], r[src] + eps, cb)
        c = nearest_code(r, cb)
        r = r - jnp.take(cb, c, axis=0)
        new.append(cb)
        revived.append(jnp.sum(use))
    return jnp.stack(new), jnp.stack(revived)


def ema_update(codebooks, cluster_size, embed_sum, residuals, codes, decay: float = 0.99, eps: float = 1e-5):
    """EMA (k-means style) codebook update from one batch.

    residuals [L, N, D] are each level's inputs and codes [N, L] their assignments.
    Returns (codebooks, cluster_size [L, M], embed_sum [L, M, D]).
    """
    L, M, _ = codebooks.shape
    onehot = jax.nn.one_hot(codes.T, M, dtype=residuals.dtype)  # [L, N, M]
    size = jnp.sum(onehot, axis=1)
    sums = jnp.einsum("lnm,lnd->lmd", onehot, residuals, precision=HIGHEST)
    cluster_size = decay * cluster_size + (1 - decay) * size
    embed_sum = decay * embed_sum + (1 - decay) * sums
    n = jnp.sum(cluster_size, axis=-1, keepdims=True)
    smoothed = (cluster_size + eps) / (n + M * eps) * n  # Laplace smoothing: no division by 0
    return embed_sum / smoothed[..., None], cluster_size, embed_sum
