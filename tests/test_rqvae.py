import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rqsid_jax import checkpointing, sharding
from rqsid_jax.errors import ConfigError, TrainingError
from rqsid_jax.quantization.train import (Trainer, default_config, epoch_permutation, init_state, make_optimizer,
                                          model_from_state, train_rqvae, usage_report)
from rqsid_jax.sid.assign import assign_codes_streaming, collision_token, sid_report, with_collision_token


def tiny_cfg(**kw):
    c = default_config()
    c.hidden_dims = (32,)
    c.latent_dim = 8
    c.levels = 2
    c.codebook_size = 16
    c.batch_size = 64
    c.num_steps = 30
    c.revive_every = 10
    c.log_every = 10
    c.checkpoint_every = 10
    c.kmeans_iters = 5
    c.update(kw)
    return c


def clustered(n=400, d=24, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, d)) * 3
    return (centers[rng.integers(0, 20, n)] + rng.standard_normal((n, d))).astype(np.float32)


def _params(model):
    from flax import nnx
    return jax.tree.leaves(nnx.state(model))


def test_same_seed_same_sids_and_healthy_usage():
    x = clustered()
    m1, h1 = train_rqvae(tiny_cfg(), x, progress=False)
    m2, _ = train_rqvae(tiny_cfg(), x, progress=False)
    c1, c2 = np.asarray(m1.codes(x)), np.asarray(m2.codes(x))
    np.testing.assert_array_equal(c1, c2)
    assert h1[-1]["step"] == 30 and h1[-1]["used_codes"][0] >= 12
    assert {"loss", "recon", "perplexity", "usage_fraction", "collapsed_levels"} <= set(h1[-1])
    m3, _ = train_rqvae(tiny_cfg(seed=1), x, progress=False)
    assert not np.array_equal(np.asarray(m3.codes(x)), c1)


@pytest.mark.parametrize("ema", [False, True])
def test_resume_after_interrupt_matches_uninterrupted(tmp_path, ema):
    x = clustered()
    cfg = tiny_cfg(ema=ema)  # EMA: the running counts and sums must come back too
    full, _ = train_rqvae(cfg, x, str(tmp_path / "a"), progress=False)
    train_rqvae(cfg, x, str(tmp_path / "b"), stop_after=20, progress=False)
    resumed, _ = train_rqvae(cfg, x, str(tmp_path / "b"), progress=False)
    for a, b in zip(_params(full), _params(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_reload_in_new_process_reproduces_sids(tmp_path):
    x = clustered()
    np.save(tmp_path / "x.npy", x)
    model, _ = train_rqvae(tiny_cfg(), x, str(tmp_path / "ckpt"), progress=False)
    codes = np.asarray(model.codes(x)).tolist()
    code = f"""
import json, numpy as np
from tests.test_rqvae import tiny_cfg
from rqsid_jax.quantization.train import load_rqvae
m = load_rqvae(tiny_cfg(), 24, {str(tmp_path / 'ckpt')!r})
print(json.dumps(np.asarray(m.codes(np.load({str(tmp_path / 'x.npy')!r}))).tolist()))
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert json.loads(p.stdout.strip().splitlines()[-1]) == codes


def test_non_finite_stops_with_step_items_and_keeps_checkpoint(tmp_path):
    cfg = tiny_cfg(checkpoint_every=2, revive_every=0)
    clean = clustered()
    x = clean.copy()
    # 400 items in batches of 64: six steps an epoch. The bad item is first drawn at step 5,
    # after the checkpoints of steps 2 and 4 were written.
    bad = int(epoch_permutation(cfg.seed, 0, len(x))[4 * 64 + 10])
    x[bad] = np.inf
    with pytest.raises(TrainingError, match=rf"non-finite input at step 5; offending items \[{bad}\]; "
                                            r"last good checkpoint kept at step 4"):
        train_rqvae(cfg, x, str(tmp_path / "b"), progress=False)
    steps = sorted(int(d) for d in os.listdir(tmp_path / "b") if d.isdigit())
    assert steps and max(steps) == 4
    # The kept checkpoint is the good state of step 4: with the item repaired, the failed run
    # resumes from it and ends exactly where a run stopped cleanly at step 4 and resumed does.
    # (Both keep the input statistics of the data they started on, which left the bad row out.)
    train_rqvae(cfg, x, str(tmp_path / "a"), stop_after=4, progress=False)
    ref, _ = train_rqvae(cfg, clean, str(tmp_path / "a"), progress=False)
    resumed, _ = train_rqvae(cfg, clean, str(tmp_path / "b"), progress=False)
    for a, b in zip(_params(ref), _params(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A loss that blows up (finite inputs, absurd learning rate) stops too, without saving the bad
    # state. The host looks at the loss once a log interval, yet names the first bad step: the
    # run stopped just before it ends cleanly.
    blow = tiny_cfg(learning_rate=1e30, optimizer="adagrad", log_every=50, checkpoint_every=50, revive_every=0)
    with pytest.raises(TrainingError, match=r"non-finite loss at step \d+") as e:
        train_rqvae(blow, clustered(), progress=False)
    first_bad = int(re.search(r"step (\d+)", str(e.value)).group(1))
    assert first_bad < blow.log_every
    _, hist = train_rqvae(blow, clustered(), stop_after=first_bad - 1, progress=False)
    assert np.isfinite(hist[-1]["loss"]) and hist[-1]["step"] == first_bad - 1


def _checkpointed_state(cfg, x, n_devices, directory):
    """Trains on n devices, then restores the final checkpoint (params, stats, optimizer state)."""
    train_rqvae(cfg, x, str(directory), mesh=sharding.data_mesh(n_devices), progress=False)
    graphdef, target = init_state(cfg, x, sharding.data_mesh(1), jax.random.key(cfg.seed))
    state, step = checkpointing.restore(checkpointing.manager(str(directory)), target)
    assert step == cfg.num_steps
    return graphdef, state


@pytest.mark.parametrize("ema", [False, True])
def test_one_vs_eight_devices_same_training(tmp_path, ema):
    """30 steps with revival at 10/20/30: parameters, statistics, optimizer (and EMA) state agree."""
    cfg = tiny_cfg(ema=ema)
    x = clustered()
    graphdef, one = _checkpointed_state(cfg, x, 1, tmp_path / "one")
    _, eight = _checkpointed_state(cfg, x, 8, tmp_path / "eight")
    assert ("ema_size" in one) == ema
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(one), jax.tree.leaves(eight)):
        # Sharding changes only the order of float32 sums over the batch. Adam divides the
        # gradient of a rarely used code by its own size, so where that gradient is rounding
        # noise the two runs step that value by up to one learning rate in other directions: the
        # bound is one update (lr = 1e-3; measured 3.2e-4 on an AVX512 EPYC, under 5e-5 on a
        # Zen 3). Another seed on 8 devices misses this bound on nearly every parameter (up to
        # 4.9 on the codebooks); the codes below must agree exactly.
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=cfg.learning_rate,
                                   err_msg=jax.tree_util.keystr(path))
    m1, m8 = (model_from_state(graphdef, s) for s in (one, eight))
    np.testing.assert_array_equal(np.asarray(m1.codes(x)), np.asarray(m8.codes(x)))


def test_ema_step_by_hand():
    """One EMA step: the codebooks are the decayed cluster sums over the smoothed decayed counts
    of the batch's residuals at every level (numpy, float64), and no codebook loss is trained."""
    cfg = tiny_cfg(ema=True, ema_decay=0.5)
    x = clustered()
    mesh = sharding.data_mesh(1)
    graphdef, state = init_state(cfg, x, mesh, jax.random.key(cfg.seed))
    # non-trivial EMA statistics to start from
    state["ema_size"] = jnp.asarray(np.random.default_rng(1).uniform(0.5, 3.0, state["ema_size"].shape))
    trainer = Trainer(cfg, graphdef, make_optimizer(cfg), mesh)
    xb = x[:64]
    z = np.asarray(model_from_state(graphdef, state).encode(jnp.asarray(xb)), np.float64)
    books = np.asarray(state["params"]["codebooks"][...], np.float64)
    size, sums = np.asarray(state["ema_size"], np.float64), np.asarray(state["ema_sum"], np.float64)
    L, M, _ = books.shape
    want, r, eps, d = np.empty_like(books), z.copy(), 1e-5, 0.5
    for level in range(L):
        code = np.argmin(((r[:, None] - books[level][None]) ** 2).sum(-1), 1)
        onehot = np.eye(M)[code]
        s = d * size[level] + (1 - d) * onehot.sum(0)
        e = d * sums[level] + (1 - d) * onehot.T @ r
        want[level] = e / ((s + eps) / (s.sum() + M * eps) * s.sum())[:, None]
        r = r - books[level][code]
    new, m = jax.jit(trainer.train_step)(state, jnp.asarray(xb), jnp.bool_(True))
    np.testing.assert_allclose(np.asarray(new["params"]["codebooks"][...]), want, rtol=1e-4, atol=1e-5)
    assert float(m["codebook"]) > 0  # it is computed, but not part of the EMA loss
    assert float(m["loss"]) == pytest.approx(float(m["recon"]) + cfg.beta * float(m["commitment"]), rel=1e-6)


def test_config_validated_against_data():
    x = clustered(n=100)
    with pytest.raises(ConfigError, match="codebook_size=256 exceeds the 100 items"):
        train_rqvae(tiny_cfg(codebook_size=256), x, progress=False)
    with pytest.raises(ConfigError, match="latent_dim=64"):
        train_rqvae(tiny_cfg(latent_dim=64), x, progress=False)
    with pytest.raises(ConfigError, match="levels=0"):
        train_rqvae(tiny_cfg(levels=0), x, progress=False)
    with pytest.raises(ConfigError, match="optimizer='sgdx'"):
        train_rqvae(tiny_cfg(optimizer="sgdx"), x, progress=False)


def test_adagrad_variant_trains():
    _, h = train_rqvae(tiny_cfg(optimizer="adagrad", learning_rate=0.4), clustered(), progress=False)
    assert np.isfinite(h[-1]["loss"]) and h[-1]["loss"] < h[0]["loss"]


def test_usage_report_flags_collapse():
    codes = np.zeros((100, 2), np.int32)
    codes[:, 1] = np.arange(100) % 16
    rep = usage_report(codes, 16)
    assert rep["used_codes"] == [1, 16] and rep["perplexity"][0] == 1.0


def test_collision_token_and_report_by_hand():
    codes = np.array([[1, 2], [0, 1], [1, 2], [1, 2], [0, 1], [3, 3]])
    np.testing.assert_array_equal(collision_token(codes), [0, 0, 1, 2, 1, 0])
    rep = sid_report(codes, 4)
    assert rep["unique_prefix_ratio"] == pytest.approx(1 / 6)
    assert rep["collision_groups"] == {1: 1, 2: 1, 3: 1} and rep["max_collision_group"] == 3
    assert rep["all_sids_unique"] and rep["used_codes"] == [3, 3]
    assert with_collision_token(codes).shape == (6, 3)


def test_streaming_assignment_matches_direct(tmp_path):
    x = clustered(n=2500)
    np.save(tmp_path / "x.npy", x)
    model, _ = train_rqvae(tiny_cfg(), x, progress=False)
    enc = jax.jit(model.codes)
    out = assign_codes_streaming(enc, str(tmp_path / "x.npy"), str(tmp_path / "codes.npy"), 2,
                                 chunk_size=1000, progress=False)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(model.codes(x)))
    np.testing.assert_array_equal(np.load(tmp_path / "codes.npy"), np.asarray(out))


def test_closed_event_loop_callbacks_are_one_warning_and_other_errors_pass_through(capsys, caplog, monkeypatch):
    # After a failed save, tensorstore completes futures onto orbax's closed event loop; CPython
    # reports that through sys.excepthook / sys.unraisablehook as a bare traceback.
    closed = RuntimeError("Event loop is closed")
    sys.excepthook(RuntimeError, closed, None)
    sys.unraisablehook(type("U", (), {"exc_value": closed, "exc_type": RuntimeError, "exc_traceback": None,
                                      "err_msg": None, "object": None})())
    assert "Traceback" not in capsys.readouterr().err
    assert sum("event loop closed" in r.getMessage() for r in caplog.records) == 2
    try:
        raise ValueError("a real bug")
    except ValueError as e:
        sys.excepthook(ValueError, e, e.__traceback__)  # still printed in full
    assert "ValueError: a real bug" in capsys.readouterr().err
    # after save() has reported a failed write, its late callbacks (which can come at exit, after
    # the error line) print nothing
    monkeypatch.setattr(checkpointing, "_save_failed", True)
    caplog.clear()
    sys.excepthook(RuntimeError, closed, None)
    assert not caplog.records and "Traceback" not in capsys.readouterr().err
