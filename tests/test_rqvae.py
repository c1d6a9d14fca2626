import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from rqsid_jax.errors import ConfigError, TrainingError
from rqsid_jax.quantization.train import default_config, load_rqvae, train_rqvae, usage_report
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


def test_resume_after_interrupt_matches_uninterrupted(tmp_path):
    x = clustered()
    full, _ = train_rqvae(tiny_cfg(), x, str(tmp_path / "a"), progress=False)
    train_rqvae(tiny_cfg(), x, str(tmp_path / "b"), stop_after=20, progress=False)
    resumed, _ = train_rqvae(tiny_cfg(), x, str(tmp_path / "b"), progress=False)
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
    x = clustered()
    x[123] = np.inf
    with pytest.raises(TrainingError, match=r"non-finite input at step (\d+); offending items \[123\]") as e:
        train_rqvae(tiny_cfg(), x, str(tmp_path), progress=False)
    bad_step = int(e.value.args[0].split("step ")[1].split(";")[0])
    steps = sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit())
    assert all(s < bad_step for s in steps)
    # A loss that blows up (finite inputs, absurd learning rate) stops too, without saving the bad state.
    with pytest.raises(TrainingError, match=r"non-finite loss at step \d+"):
        train_rqvae(tiny_cfg(learning_rate=1e30, optimizer="adagrad"), clustered(), progress=False)


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


def test_ema_and_adagrad_variants_train():
    x = clustered()
    _, h = train_rqvae(tiny_cfg(ema=True), x, progress=False)
    assert np.isfinite(h[-1]["loss"])
    _, h = train_rqvae(tiny_cfg(optimizer="adagrad", learning_rate=0.4), x, progress=False)
    assert np.isfinite(h[-1]["loss"])


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
