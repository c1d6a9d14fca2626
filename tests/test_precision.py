"""Mixed precision (bfloat16 operands, float32 accumulation) and the item-level encoder input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rqsid_jax import sharding
from rqsid_jax.errors import ConfigError
from rqsid_jax.retrieval import precision
from rqsid_jax.retrieval.beam import DeviceIndex, run_beam
from rqsid_jax.retrieval.input_pipeline import query_examples, train_examples
from rqsid_jax.retrieval.sid_vocab import PAD
from rqsid_jax.retrieval.train import build_retriever, make_train_step, optimizer, train_retriever
from rqsid_jax.sid.mitigations import top_k_removal
from tests.test_retrieval import _brute_force, _catalogue, _split, tiny_cfg


def _dots(jaxpr):
    """Every dot_general in a jaxpr, with those of nested jaxprs (jit calls)."""
    out = []
    for eq in jaxpr.eqns:
        if eq.primitive.name == "dot_general":
            out.append(eq)
        for p in eq.params.values():
            for j in (p if isinstance(p, (list, tuple)) else [p]):
                inner = getattr(j, "jaxpr", j)
                if hasattr(inner, "eqns"):
                    out += _dots(inner)
    return out


def test_mixed_einsum_gradients_run_in_bfloat16_and_match_float32():
    a = jax.random.normal(jax.random.key(0), (2, 5, 8))
    w = jax.random.normal(jax.random.key(1), (8, 3, 4))

    def f(a, w, dt):
        return jnp.sum(jnp.sin(precision.einsum("btm,mhd->bhtd", a, w, dt)))

    g32 = jax.grad(f, argnums=(0, 1))(a, w, "float32")
    g16 = jax.grad(f, argnums=(0, 1))(a, w, "bfloat16")
    for x, y in zip(g32, g16):
        assert y.dtype == jnp.float32  # gradients come back in the operands' own dtype
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=0.05, atol=0.05)
    # Forward and both backward products take bfloat16 operands and accumulate in float32
    # (JAX's own transpose would multiply the float32 cotangent: a float32 matmul).
    dots = _dots(jax.make_jaxpr(jax.grad(f, argnums=(0, 1)), static_argnums=2)(a, w, "bfloat16").jaxpr)
    assert len(dots) == 3
    for eq in dots:
        assert [v.aval.dtype for v in eq.invars] == [jnp.bfloat16, jnp.bfloat16]
        assert eq.outvars[0].aval.dtype == jnp.float32
    with pytest.raises(ValueError, match="self-summed"):
        precision.einsum("ab,bc->c", a[0], w[:, 0], "bfloat16")


def test_auto_precision_follows_the_hardware(tmp_path):
    plain, bf16 = tmp_path / "plain", tmp_path / "bf16"
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n")
    bf16.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert not precision.cpu_has_fast_bf16(str(plain)) and precision.cpu_has_fast_bf16(str(bf16))
    assert not precision.cpu_has_fast_bf16(str(tmp_path / "missing"))
    assert precision.resolve("auto", "tpu") == "bfloat16" and precision.resolve("auto", "gpu") == "bfloat16"
    assert precision.resolve("float32", "tpu") == "float32" and precision.resolve("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(ConfigError, match="retriever.dtype='float16'"):
        build_retriever(tiny_cfg(dtype="float16"), _catalogue())
    with pytest.raises(ConfigError, match="retriever.encoder_input='positions'"):
        build_retriever(tiny_cfg(encoder_input="positions"), _catalogue())


def _batches(r, n=3):
    col = r.collator(train_examples(_split(), r.vocab), 32)
    return [col(p) for p in col.plan(0, 0)[:n]]


def _train(cfg, n_devices, steps=3):
    r, params = build_retriever(cfg, _catalogue())
    tx = optimizer(cfg)
    mesh = sharding.data_mesh(n_devices)
    st = sharding.replicate({"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)}, mesh)
    step = jax.jit(make_train_step(r, cfg, tx))
    losses = []
    for i, b in enumerate(_batches(r, steps)):
        st, loss = step(st, sharding.shard_batch({k: b[k] for k in ("encoder", "target", "weight")}, mesh),
                        jax.random.key(i))
        losses.append(float(loss))
    return st, losses


@pytest.mark.parametrize("encoder_input", ["tokens", "items"])
def test_bfloat16_step_is_close_to_float32_and_keeps_float32_state(encoder_input):
    s32, l32 = _train(tiny_cfg(dtype="float32", encoder_input=encoder_input), 1)
    s16, l16 = _train(tiny_cfg(dtype="bfloat16", encoder_input=encoder_input), 1)
    assert np.isfinite(l16).all()
    np.testing.assert_allclose(l16, l32, rtol=0.01)
    for leaf in jax.tree.leaves((s16["params"], s16["opt_state"])):
        assert leaf.dtype in (jnp.float32, jnp.int32)  # master copy and Adam moments stay float32
    assert any(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(s16["opt_state"]))
    for a, b in zip(jax.tree.leaves(s32["params"]), jax.tree.leaves(s16["params"])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-3)  # 3 Adam steps of lr <= 1e-3


@pytest.mark.parametrize("dtype,encoder_input", [("float32", "tokens"), ("bfloat16", "tokens"), ("float32", "items")])
def test_one_vs_eight_devices_same_training(dtype, encoder_input):
    """Dropout on, three steps: parameters and optimizer state agree on 1 and 8 devices."""
    cfg = tiny_cfg(dtype=dtype, encoder_input=encoder_input, dropout=0.1)
    one, l1 = _train(cfg, 1)
    eight, l8 = _train(cfg, 8)
    np.testing.assert_allclose(l1, l8, rtol=1e-4)
    if dtype == "float32":  # sharding changes only the order of float32 sums
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
        return
    # In bfloat16 a reordered float32 sum can flip an operand's rounding (relative 2^-8), and
    # Adam's first steps move a parameter by ~lr whatever its gradient's size, so a near-zero
    # gradient can move it the other way (seen at XLA level 0: one element 7e-4 apart). Compare
    # what training did instead: each tensor's update, and each optimizer moment, as a whole
    # (a device that saw other data would change a large part of them).
    init = build_retriever(cfg, _catalogue())[1]
    for (path, a), b, p0 in zip(jax.tree_util.tree_leaves_with_path(one["params"]), jax.tree.leaves(eight["params"]),
                                jax.tree.leaves(init)):
        ua, ub = np.asarray(a) - np.asarray(p0), np.asarray(b) - np.asarray(p0)
        assert np.linalg.norm(ua - ub) <= 0.05 * np.linalg.norm(ua) + 1e-7, jax.tree_util.keystr(path)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(one["opt_state"]), jax.tree.leaves(eight["opt_state"])):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.linalg.norm(a - b) <= 0.05 * np.linalg.norm(a) + 1e-12, jax.tree_util.keystr(path)


def test_bfloat16_resume_is_bit_exact(tmp_path):
    sids, sp = _catalogue(), _split()
    cfg = tiny_cfg(eval_every=0, dtype="bfloat16", encoder_input="items")
    _, full, _ = train_retriever(cfg, sids, sp, str(tmp_path / "a"), progress=False)
    train_retriever(cfg, sids, sp, str(tmp_path / "b"), stop_after=12, progress=False)
    _, resumed, _ = train_retriever(cfg, sids, sp, str(tmp_path / "b"), progress=False)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        assert a.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _query(r, item):
    ex = query_examples([1], [[item, (item + 5) % 12]], r.vocab, 12)
    return jnp.asarray(r.collator(ex, 1)(np.array([0]))["encoder"])


@pytest.mark.parametrize("variable", [False, True])
def test_item_input_layout_and_encoding(variable):
    sids = _catalogue()
    if variable:
        sids = top_k_removal(sids[:, :3], 4, 2).sids
    r, params = build_retriever(tiny_cfg(encoder_input="items"), sids, seed=2)
    w = r.vocab.max_sid_tokens
    hist = [3, 7, 5]
    ex = query_examples([4], [hist], r.vocab, 12)
    enc = r.collator(ex, 1)(np.array([0]))["encoder"][0]
    # the user token, then one fixed-width slot per item, the item's own tokens in it (not compacted)
    assert enc[0] == r.vocab.user_offset + 4 and len(enc) in r.buckets and (len(enc) - 1) % w == 0
    slots = enc[1:].reshape(-1, w)
    np.testing.assert_array_equal(slots[:3], r.item_tok[hist])
    assert (slots[3:] == PAD).all()
    model = nnx.merge(r.graphdef, params)
    x, mask = model.embed_encoder_input(jnp.asarray(enc[None]))
    table, level = np.asarray(model.embed.embedding[...]), np.asarray(model.level_embed[...])
    want = [table[enc[0]]] + [sum((table[t] + level[j] for j, t in enumerate(row) if t != PAD),
                                  np.zeros(table.shape[1], np.float32)) for row in slots]
    np.testing.assert_allclose(np.asarray(x[0]), np.stack(want), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(mask[0]), [True] * 4 + [False] * (len(slots) - 3))
    # beam search over item input stays exact: the brute-force order of every catalogue SID
    enc2 = _query(r, 2)
    _, scores, items = run_beam(r.graphdef, params, enc2, DeviceIndex.from_index(r.index), len(sids))
    brute = _brute_force(r, params, enc2)
    order = np.argsort(-brute, kind="stable")
    np.testing.assert_array_equal(np.asarray(items[0]), order)
    np.testing.assert_allclose(np.asarray(scores[0]), brute[order], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("encoder_input", ["tokens", "items"])
def test_bfloat16_beam_search_guarantee(encoder_input):
    """What bfloat16 decoding guarantees: each beam's score is its SID's log-probability under
    the same bfloat16 model by teacher forcing, within 0.5% (KV-cached and full decoding round
    their bfloat16 operands differently), and a beam as wide as the catalogue ranks it as that
    model does up to ties within twice that tolerance: its top 10 are the top 10 by teacher
    forcing. (In float32 the order equals brute-force enumeration exactly: test_retrieval.)"""
    sids = _catalogue(n=30)
    r, params = build_retriever(tiny_cfg(dtype="bfloat16", encoder_input=encoder_input), sids, seed=3)
    ix = DeviceIndex.from_index(r.index)
    for item in (0, 4, 9):
        enc = _query(r, item)
        k = 10
        _, scores, items = run_beam(r.graphdef, params, enc, ix, len(sids))
        brute = _brute_force(r, params, enc)
        items, scores = np.asarray(items[0]), np.asarray(scores[0])
        assert sorted(items.tolist()) == list(range(len(sids)))
        np.testing.assert_allclose(scores, brute[items], rtol=5e-3, atol=0.01)
        kth = np.sort(brute)[::-1][k - 1]
        assert brute[items[:k]].min() >= kth - 2 * (5e-3 * abs(kth) + 0.01)
