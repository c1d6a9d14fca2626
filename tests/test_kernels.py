import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rqsid_jax import sharding
from rqsid_jax.quantization.kernels import (decode, ema_update, level_usage, nearest_code, perplexity,
                                            residual_encode, revive_dead_codes, rq_losses, straight_through)
from rqsid_jax.quantization.kmeans import kmeans, rq_kmeans


def _data(n=3000, d=16, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, d))


def test_nearest_code_matches_brute_force_and_chunks():
    x, cb = _data(), _data(64, seed=1)
    brute = np.argmin(((np.asarray(x)[:, None] - np.asarray(cb)[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest_code(x, cb), brute)
    np.testing.assert_array_equal(nearest_code(x, cb, chunk_size=700), brute)  # remainder chunk too


def test_residual_encode_decode_and_losses_over_all_levels():
    x = _data(500, 8)
    books = jax.random.normal(jax.random.key(2), (3, 32, 8))
    codes, residuals, q = residual_encode(books, x)
    assert codes.shape == (500, 3) and residuals.shape == (3, 500, 8)
    np.testing.assert_allclose(decode(books, codes), q, atol=1e-5)
    # Manual numpy greedy RQ and per-level losses summed over every level.
    r = np.asarray(x)
    b = np.asarray(books)
    loss = 0.0
    for l in range(3):
        c = np.argmin(((r[:, None] - b[l][None]) ** 2).sum(-1), 1)
        np.testing.assert_array_equal(codes[:, l], c)
        np.testing.assert_allclose(residuals[l], r, atol=1e-5)
        loss += np.mean((r - b[l][c]) ** 2)
        r = r - b[l][c]
    qq, cc, cb_loss, commit = rq_losses(books, x)
    np.testing.assert_array_equal(cc, codes)
    np.testing.assert_allclose(cb_loss, loss, rtol=1e-5)
    np.testing.assert_allclose(commit, loss, rtol=1e-5)
    # The codebook loss has a gradient in every level's codebook, not only the last.
    g = jax.grad(lambda bk: rq_losses(bk, x)[2])(books)
    assert all(float(jnp.abs(g[l]).sum()) > 0 for l in range(3))


def test_straight_through_gradient_is_identity():
    z = jnp.arange(4.0)
    q = jnp.round(z * 0.3)
    g = jax.grad(lambda z: jnp.sum(straight_through(z, q) * jnp.array([1.0, 2.0, 3.0, 4.0])))(z)
    np.testing.assert_array_equal(g, [1, 2, 3, 4])
    np.testing.assert_array_equal(straight_through(z, q), q)


def test_kmeans_recovers_separated_clusters():
    centers = np.array([[10.0, 0], [-10, 0], [0, 10], [0, -10]], np.float32)
    rng = np.random.default_rng(0)
    x = np.concatenate([c + 0.1 * rng.standard_normal((50, 2)) for c in centers]).astype(np.float32)
    found = np.asarray(kmeans(jax.random.key(0), jnp.asarray(x), 4))
    d = np.abs(found[:, None] - centers[None]).sum(-1).min(0)
    assert d.max() < 0.2
    with pytest.raises(ValueError, match="at least k=8"):
        kmeans(jax.random.key(0), jnp.asarray(x[:5]), 8)


def test_rq_kmeans_uses_every_code_and_reduces_error():
    x = _data(4000, 8)
    books = rq_kmeans(jax.random.key(0), x, 3, 32)
    codes, _, q = residual_encode(books, x)
    counts = np.asarray(level_usage(codes, 32))
    assert (counts > 0).all()
    errs = [float(jnp.mean((x - decode(books[:l], codes[:, :l])) ** 2)) for l in (1, 2, 3)]
    assert errs[0] > errs[1] > errs[2]
    np.testing.assert_allclose(perplexity(jnp.array([[5, 5, 5, 5], [20, 0, 0, 0]])), [4.0, 1.0], rtol=1e-5)


def test_revive_dead_codes_reseeds_unused_codes():
    x = _data(1000, 4)
    books = jax.random.normal(jax.random.key(3), (2, 16, 4)) * 0.5
    books = books.at[0, 3].set(1e3).at[0, 7].set(-1e3)  # codes 3 and 7 can never win
    codes, _, _ = residual_encode(books, x)
    assert (np.asarray(level_usage(codes, 16))[0, [3, 7]] == 0).all()
    new, revived = revive_dead_codes(books, x, 1, jax.random.key(0))
    assert int(revived[0]) >= 2
    counts = np.asarray(level_usage(residual_encode(new, x)[0], 16))
    assert (counts[0] > 0).all()
    untouched = np.setdiff1d(np.arange(16), [3, 7])
    used = counts[0][untouched] > 0
    np.testing.assert_array_equal(np.asarray(new)[0][untouched][used], np.asarray(books)[0][untouched][used])


def test_ema_update_moves_codes_to_cluster_means():
    x = jnp.array([[1.0, 0], [3.0, 0], [0, 5.0]])
    books = jnp.array([[[2.0, 0], [0, 4.0]]])
    codes, residuals, _ = residual_encode(books, x)
    new, size, _ = ema_update(books, jnp.ones((1, 2)), books, residuals, codes, decay=0.0, eps=0.0)
    np.testing.assert_allclose(new[0], [[2.0, 0], [0, 5.0]], atol=1e-5)
    np.testing.assert_allclose(size, [[2, 1]])


def test_one_vs_eight_devices_identical_codes():
    assert jax.device_count() == 8
    x = np.asarray(_data(4096, 32, seed=5))
    books = rq_kmeans(jax.random.key(1), jnp.asarray(x[:2048]), 3, 64)
    enc = jax.jit(lambda b, x: residual_encode(b, x)[0])
    one = enc(jax.device_put(books, jax.devices()[0]), jax.device_put(x, jax.devices()[0]))
    mesh = sharding.data_mesh(8)
    xs = sharding.shard_batch(x, mesh)
    assert len(xs.sharding.device_set) == 8
    eight = enc(sharding.replicate(books, mesh), xs)
    np.testing.assert_array_equal(np.asarray(one), np.asarray(eight))
