import json
import math
import os

import numpy as np
import pytest

from rqsid_jax.sid import hourglass, mitigations
from rqsid_jax.sid.report import write_report


def test_entropy_gini_std_by_hand():
    # counts [0, 0, 0, 4]: all mass on one token.
    c = np.array([0, 0, 0, 4])
    assert hourglass.entropy_bits(c) == 0.0
    assert hourglass.gini(c) == pytest.approx(0.75)  # sum (2i-n-1) x_i / (n sum x) = 12/16
    assert hourglass.gini(np.array([3, 3, 3, 3])) == 0.0
    assert hourglass.entropy_bits(np.array([1, 1, 2])) == pytest.approx(1.5)  # 2*(1/4*2) + 1/2*1
    codes = np.array([[0, 0], [1, 0], [2, 0], [3, 1]])
    m = hourglass.layer_metrics(codes, 4)
    assert m[0]["entropy_bits"] == pytest.approx(2.0) and m[0]["normalized_entropy"] == pytest.approx(1.0)
    assert m[1]["entropy_bits"] == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert m[1]["utilization"] == 0.5 and m[1]["count_std"] == pytest.approx(np.std([3, 1, 0, 0]))
    assert m[1]["top1pct_share"] == 0.75 and m[1]["max_count"] == 3
    assert m[0]["perplexity"] == pytest.approx(4.0)


def test_path_sparsity_and_branching_by_hand():
    codes = np.array([[0, 0, 0], [0, 1, 0], [0, 1, 1], [1, 0, 0], [1, 0, 0]])
    p = hourglass.path_sparsity(codes, 2)
    assert [r["distinct_prefixes"] for r in p] == [2, 3, 4]
    assert [r["possible"] for r in p] == [2, 4, 8]
    assert p[2]["occupancy"] == 0.5
    # depth 2: parent 0 has children {0, 1}, parent 1 has {0} -> mean 1.5, max 2
    assert p[1]["branching_mean"] == 1.5 and p[1]["branching_max"] == 2 and p[1]["branching_hist"] == {1: 1, 2: 1}
    # depth 3: parents (0,0)->{0}, (0,1)->{0,1}, (1,0)->{0}
    assert p[2]["branching_mean"] == pytest.approx(4 / 3)


def test_head_tail_split():
    codes = np.array([[0, 5]] * 6 + [[0, 2]] * 3 + [[0, 1]])
    head, is_head = hourglass.head_tail_split(codes, 8, head_share=0.5)
    assert head.tolist() == [5] and is_head.sum() == 6
    head, is_head = hourglass.head_tail_split(codes, 8, head_share=0.7)
    assert head.tolist() == [2, 5] and is_head.sum() == 9


def test_capacity_formula():
    assert mitigations.capacity_top_k(256, 3, 0) == 256 ** 3
    assert mitigations.capacity_top_k(4, 3, 2) == 64 + 2 * (4 - 16)
    assert mitigations.remove_layer(np.zeros((3, 3), int), 4).capacity == 16


def _skewed(n=2000, m=32, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, m, (n, 3))
    codes[:, 1] = np.minimum(rng.zipf(1.6, n) - 1, m - 1)
    return codes


def test_top_k_leaves_non_top_items_unchanged_and_all_unique():
    codes = _skewed()
    top = mitigations.top_k_tokens(codes, 32, 3)
    s = mitigations.top_k_removal(codes, 32, 3)
    keep = ~np.isin(codes[:, 1], top)
    base = mitigations.baseline(codes, 32)
    np.testing.assert_array_equal(s.sids[keep], base.sids[keep])
    assert (s.sids[~keep, 1] == mitigations.ABSENT).all()
    np.testing.assert_array_equal(s.sids[~keep][:, [0, 2]], codes[~keep][:, [0, 2]])
    assert s.variable_length and set(s.lengths.tolist()) == {3, 4}
    for t in mitigations.all_mitigations(codes, 32, top_ks=(1, 3, 10)):
        assert t.unique(), t.name


def test_remove_and_swap():
    codes = _skewed()
    r = mitigations.remove_layer(codes, 32)
    np.testing.assert_array_equal(r.sids[:, :2], codes[:, [0, 2]])
    s = mitigations.swap_layers(codes, 32)
    np.testing.assert_array_equal(s.sids[:, :3], codes[:, [1, 0, 2]])
    assert r.unique() and s.unique()


def test_hourglass_detected_on_skewed_middle_layer(tmp_path):
    codes = _skewed()
    assert hourglass.is_hourglass(hourglass.layer_metrics(codes, 32))
    flat = np.random.default_rng(1).integers(0, 32, (2000, 3))
    assert not hourglass.is_hourglass(hourglass.layer_metrics(flat, 32))
    rng = np.random.default_rng(0)
    m = write_report(str(tmp_path), codes, 32, residuals=rng.standard_normal((3, 2000, 4)), top_ks=(2, 5),
                     synthetic_cfg=dict(n=3000, codebook_size=16, clusters=100, iters=5))
    assert m["baseline"]["hourglass"]
    text = open(tmp_path / "report.md").read()
    assert "Hourglass on this data: **Yes**" in text and "top@5" in text and "long_tailed" in text
    for f in m["figures"].values():
        assert os.path.getsize(tmp_path / f) > 10_000  # real PNGs
    assert json.load(open(tmp_path / "metrics.json"))["mitigations"][0]["name"] == "baseline"
