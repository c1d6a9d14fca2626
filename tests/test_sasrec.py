"""SASRec baseline: causal masking, full-catalogue scoring, windows, resume and determinism."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rqsid_jax.baseline import sasrec
from rqsid_jax.data.dataset import ItemTable, SequenceDataset
from rqsid_jax.errors import ConfigError

N_ITEMS = 30


def _split(users=64, seed=0):
    rng = np.random.default_rng(seed)
    # a learnable pattern: each user walks the catalogue with a user-specific stride
    seqs = []
    for _ in range(users):
        start, stride = rng.integers(0, N_ITEMS), rng.integers(1, 3)
        seqs.append(((start + stride * np.arange(rng.integers(4, 12))) % N_ITEMS).astype(np.int32))
    ds = SequenceDataset("t", ItemTable.bare([str(i) for i in range(N_ITEMS)]), [f"u{i}" for i in range(users)], seqs)
    return ds.split(max_history=6, buckets=16)


def _cfg(**kw):
    c = sasrec.default_config()
    c.update(dict(d_model=16, num_heads=2, head_dim=8, mlp_dim=32, layers=2, dropout=0.1, max_len=6,
                  dtype="float32", batch_size=16, num_epochs=6, eval_every_epochs=2, patience=0, log_every=4,
                  bucket_lengths=(3,)))
    c.update(kw)
    return c


def test_no_position_sees_its_future():
    g, p = sasrec.build(_cfg(), N_ITEMS)
    m = nnx.merge(g, p)
    seq = jnp.array([[0, 0, 3, 7, 9, 4], [5, 6, 7, 8, 9, 10]])
    h = np.asarray(m(seq))
    for t in range(6):
        changed = np.asarray(seq).copy()
        changed[:, t + 1:] = (changed[:, t + 1:] + 11) % N_ITEMS + 1  # every later item replaced
        h2 = np.asarray(m(jnp.asarray(changed)))
        np.testing.assert_allclose(h2[:, : t + 1], h[:, : t + 1], atol=1e-6)
        if t < 5:
            assert not np.allclose(h2[:, t + 1:], h[:, t + 1:])
    # padding does not change a sequence's states: the same items in a shorter bucket
    short = np.asarray(m(seq[:, 2:]))
    np.testing.assert_allclose(short[0], h[0, 2:], atol=1e-5)


def test_full_catalogue_top_k_equals_brute_force_dot_products():
    g, p = sasrec.build(_cfg(), N_ITEMS)
    hist = sasrec.left_padded([[1, 2, 3], [4], [], [5, 6, 7, 8, 9, 10, 11]], 6)
    got = sasrec.top_k(g, p, hist, 7, batch_size=3)  # two batches, the second padded
    m = nnx.merge(g, p)
    emb = np.asarray(m.item.embedding[...])[1:]  # item i is row i + 1
    h = np.asarray(m(jnp.asarray(hist)))[:, -1]
    brute = np.argsort(-(h @ emb.T), axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(got, brute)
    assert hist[1].tolist() == [0, 0, 0, 0, 0, 5] and hist[3].tolist() == [7, 8, 9, 10, 11, 12]


def test_training_windows_cover_every_target_once():
    sp = _split()
    ins, outs = sasrec.training_windows(sp, 4)
    pairs = []
    for i_row, o_row in zip(ins, outs):
        real = o_row > 0
        assert (real == (i_row > 0)).all() and real[-1]  # left-padded, newest last
        for t in np.flatnonzero(real):
            # the target is the item after the input at t, and the inputs up to t are its history
            pairs.append((tuple(i_row[: t + 1][i_row[: t + 1] > 0] - 1), int(o_row[t]) - 1))
    want = []
    for s in sp.train:
        for i in range(1, len(s)):
            want.append(int(s[i]))
    assert sorted(p[1] for p in pairs) == sorted(want)
    # every history is a contiguous run of the user's training part ending right before its target
    parts = {tuple(s.tolist()) for s in sp.train}
    for hist, tgt in pairs:
        assert any(any(list(part[j:j + len(hist) + 1]) == list(hist) + [tgt] for j in range(len(part)))
                   for part in parts)


def test_training_learns_resumes_bit_exact_and_repeats(tmp_path):
    sp = _split()
    cfg = _cfg(lr_schedule="cosine", warmup_steps=4)  # the schedule's step count is resumed too
    g, best, hist = sasrec.train(cfg, sp, N_ITEMS, str(tmp_path / "a"))
    assert hist[-1]["val_recall@10"] > 0.5  # the stride pattern is learned (random: 10/30)
    m, pred = sasrec.evaluate(g, best, sp, "test", cfg.max_len)
    assert pred.shape == (sp.num_users, 50) and m["users"] == sp.num_users
    # killed after 7 steps (between evaluations), then resumed: the same parameters
    sasrec.train(cfg, sp, N_ITEMS, str(tmp_path / "b"), stop_after=7)
    _, best_b, hist_b = sasrec.train(cfg, sp, N_ITEMS, str(tmp_path / "b"))
    for x, y in zip(jax.tree.leaves(best), jax.tree.leaves(best_b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert hist_b[-1] | {"wall_s": 0} == hist[-1] | {"wall_s": 0}
    # the same seed again, no checkpoints: the same metrics
    _, best_c, _ = sasrec.train(cfg, sp, N_ITEMS)
    assert sasrec.evaluate(g, best_c, sp, "test", cfg.max_len)[0] == m


def test_bce_loss_and_config_errors():
    sp = _split()
    _, _, hist = sasrec.train(_cfg(loss="bce", num_epochs=2), sp, N_ITEMS)
    assert np.isfinite(hist[-1]["val_ndcg@10"])
    with pytest.raises(ConfigError, match="baseline.loss='hinge'"):
        sasrec.train(_cfg(loss="hinge"), sp, N_ITEMS)
    with pytest.raises(ConfigError, match="baseline.batch_size=12"):
        sasrec.train(_cfg(batch_size=12), sp, N_ITEMS)


def test_sampled_softmax_estimates_the_catalogue_softmax():
    """exp(sampled CE) is an unbiased estimate of exp(full CE): the target's score plus every
    other item's, each sampled score weighted by num_items / negatives (a sampled target dropped)."""
    g, p = sasrec.build(_cfg(dropout=0.0), N_ITEMS)
    p = jax.tree.map(lambda x: x * 3, p)  # scores a few units apart, so a wrong weighting shows
    batch = {"inputs": jnp.array([[0, 0, 3, 7, 9, 4]]), "targets": jnp.array([[0, 0, 0, 0, 0, 2]])}
    full = float(sasrec.loss_fn(g, p, batch, jax.random.key(0), "ce", N_ITEMS))
    sampled = jax.jit(jax.vmap(lambda k: sasrec.loss_fn(g, p, batch, k, "sampled_ce", N_ITEMS, 8)))(
        jax.random.split(jax.random.key(1), 20000))
    est = float(jnp.log(jnp.mean(jnp.exp(sampled))))
    assert abs(est - full) < 0.03, (est, full)
    assert float(jnp.std(sampled)) > 0.05  # the check is not vacuous: samples differ


def test_learning_rate_schedules():
    assert sasrec.schedule(_cfg(lr_schedule="constant", learning_rate=1e-3), 100) == 1e-3
    cos = sasrec.schedule(_cfg(lr_schedule="cosine", learning_rate=1e-3, warmup_steps=10), 100)
    np.testing.assert_allclose([float(cos(s)) for s in (0, 5, 10, 55, 100)], [0, 5e-4, 1e-3, 5e-4, 0], atol=1e-9)
    with pytest.raises(ConfigError, match="baseline.lr_schedule='step'"):
        sasrec.schedule(_cfg(lr_schedule="step"), 100)
