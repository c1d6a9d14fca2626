import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rqsid_jax import sharding
from rqsid_jax.data.dataset import SequenceDataset, ItemTable
from rqsid_jax.errors import DataError
from rqsid_jax.retrieval import evaluate
from rqsid_jax.retrieval.beam import DeviceIndex, run_beam
from rqsid_jax.retrieval.input_pipeline import Collator, eval_examples, query_examples, train_examples
from rqsid_jax.retrieval.metrics import bootstrap_interval, hit_ranks, mean_se, per_user, recall_ndcg
from rqsid_jax.retrieval.model import dropout
from rqsid_jax.retrieval.sid_vocab import BOS, EOS, PAD, PrefixIndex, SidVocab, item_tokens
from rqsid_jax.retrieval.train import build_retriever, default_config, optimizer, train_retriever
from rqsid_jax.sid.mitigations import top_k_removal


def tiny_cfg(**kw):
    c = default_config()
    base = dict(d_model=32, num_heads=2, head_dim=8, mlp_dim=64, encoder_layers=1, decoder_layers=1,
                batch_size=32, num_steps=24, warmup_steps=5, eval_every=12, eval_users=0, eval_beam=5,
                checkpoint_every=12, log_every=6, patience=0, data_threads=1, num_user_tokens=16,
                bucket_items=(4,),
                # exactness tests need float32 whatever 'auto' picks on the test machine
                dtype="float32")
    c.update({**base, **kw})
    return c


def _catalogue(n=12, m=4, seed=0):
    rng = np.random.default_rng(seed)
    codes = np.array(list(itertools.product(range(m), range(m), range(m))))[rng.permutation(m ** 3)[:n]]
    return np.concatenate([codes, np.zeros((n, 1), int)], 1).astype(np.int32)


def _split(n_items=12, users=40, seed=0):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, n_items, rng.integers(4, 9)).astype(np.int32) for _ in range(users)]
    ds = SequenceDataset("t", ItemTable.bare([str(i) for i in range(n_items)]), [f"u{i}" for i in range(users)], seqs)
    return ds.split(buckets=16)


@partial(jax.jit, static_argnums=0)
def _log_probs(graphdef, params, enc, dec_in):
    """Teacher-forced next-token log-probabilities [B, T, V] (the full model, no KV cache)."""
    return jax.nn.log_softmax(nnx.merge(graphdef, params)(enc, dec_in))


def _brute_force(r, params, enc):
    """Log-probability of every catalogue SID by teacher forcing."""
    tgt = jnp.asarray(r.item_tok)
    n = tgt.shape[0]
    dec_in = jnp.concatenate([jnp.full((n, 1), BOS), tgt[:, :-1]], 1)
    lp = jnp.take_along_axis(_log_probs(r.graphdef, params, jnp.repeat(enc, n, axis=0), dec_in), tgt[..., None], -1)
    return np.asarray(jnp.sum(jnp.where(tgt != PAD, lp[..., 0], 0.0), 1))


def _reference_beam(r, params, enc, beam, first=None):
    """Textbook beam search in numpy over the catalogue's token sequences, one query at a time.

    Children come from the catalogue rows themselves (not the prefix index), log-probabilities
    from a full teacher-forced forward pass (not the KV cache), and a finished SID keeps its
    score while the others grow. Returns (items [beam], scores [beam]) best first.
    """
    cat = [tuple(int(t) for t in row if t != PAD) for row in r.item_tok]
    item_of = {s: i for i, s in enumerate(cat)}
    T = r.item_tok.shape[1]
    beams = [((), 0.0)]
    for t in range(T):
        live = [p for p, _ in beams if p not in item_of]
        dec = np.full((beam, T), PAD, np.int32)  # one shape for every step: one compile
        dec[:, 0] = BOS
        for j, p in enumerate(live):
            dec[j, 1:t + 1] = p
        logp = np.asarray(_log_probs(r.graphdef, params, jnp.repeat(enc[None], beam, 0), jnp.asarray(dec)))[:, t]
        cand = []
        for p, s in beams:
            if p in item_of:
                cand.append((p, s))
                continue
            for c in sorted({q[t] for q in cat if q[:t] == p}):
                if t == 0 and first is not None and c != first:
                    continue
                cand.append((p + (c,), s + float(logp[live.index(p), c])))
        beams = sorted(cand, key=lambda x: -x[1])[:beam]
    return np.array([item_of[p] for p, _ in beams]), np.array([s for _, s in beams])


def _queries(r, n_items, n=6):
    """Encoder inputs of n different users (different histories and user tokens)."""
    ex = eval_examples(_split(n_items=n_items), r.vocab, "test").subset(np.arange(n))
    return jnp.asarray(r.collator(ex, n)(np.arange(n))["encoder"])


@pytest.mark.parametrize("variable", [False, True])
def test_constrained_beam_equals_brute_force_top_k(variable):
    sids = _catalogue()
    if variable:
        sids = top_k_removal(sids[:, :3], 4, 2).sids
    r, params = build_retriever(tiny_cfg(), sids, seed=3)
    enc = _queries(r, len(sids), 2)
    ix = DeviceIndex.from_index(r.index)
    beam = len(sids)  # wide enough to be exhaustive at every depth
    _, scores, items = run_beam(r.graphdef, params, enc, ix, beam)
    for q in range(enc.shape[0]):
        brute = _brute_force(r, params, enc[q:q + 1])
        order = np.argsort(-brute, kind="stable")
        np.testing.assert_array_equal(np.asarray(items[q]), order)
        np.testing.assert_allclose(np.asarray(scores[q]), brute[order], rtol=1e-4, atol=1e-4)
        # the numpy reference is exhaustive at this width too: it agrees with brute force
        ref_items, _ = _reference_beam(r, params, enc[q], beam)
        np.testing.assert_array_equal(ref_items, order)
    # A beam wider than the catalogue: extra slots are -1 with -inf-like scores.
    _, s2, it2 = run_beam(r.graphdef, params, enc, ix, beam + 3)
    assert (np.asarray(it2[:, beam:]) == -1).all() and (np.asarray(s2[:, beam:]) < -1e29).all()


@pytest.mark.parametrize("variable", [False, True])
def test_narrow_beam_matches_numpy_reference_for_every_query(variable):
    """Beams narrower than the catalogue prune at every depth, so the batch x beam row
    bookkeeping (parents, KV caches, trie nodes) decides the result; six different queries
    in one batch must each get exactly the reference's beams."""
    sids = _catalogue(n=20, seed=1)
    if variable:
        sids = top_k_removal(sids[:, :3], 4, 2).sids
    r, params = build_retriever(tiny_cfg(), sids, seed=5)
    enc = _queries(r, len(sids))
    ix = DeviceIndex.from_index(r.index)
    for beam in (3, 5):
        _, scores, items = run_beam(r.graphdef, params, enc, ix, beam)
        per_query = [np.asarray(items[q]).tolist() for q in range(enc.shape[0])]
        assert len({tuple(sorted(p)) for p in per_query}) > 1  # the queries really differ
        for q in range(enc.shape[0]):
            ref_items, ref_scores = _reference_beam(r, params, enc[q], beam)
            np.testing.assert_array_equal(np.asarray(items[q]), ref_items)
            np.testing.assert_allclose(np.asarray(scores[q]), ref_scores, rtol=1e-4, atol=1e-4)


def test_given_layer1_probe_forces_the_first_token():
    sids = _catalogue(n=20, seed=1)
    r, params = build_retriever(tiny_cfg(), sids, seed=5)
    enc = _queries(r, len(sids))
    ix = DeviceIndex.from_index(r.index)
    first_tokens = np.unique(r.item_tok[:, 0])
    # for each query a first token its unforced beam would not start every beam with
    _, _, free_items = run_beam(r.graphdef, params, enc, ix, 4)
    forced = np.array([first_tokens[(q + 1) % len(first_tokens)] for q in range(enc.shape[0])], np.int32)
    toks, scores, items = run_beam(r.graphdef, params, enc, ix, 4, first=jnp.asarray(forced))
    toks, items = np.asarray(toks), np.asarray(items)
    alive = items >= 0
    assert alive.any(1).all()
    assert (toks[..., 0][alive] == np.repeat(forced[:, None], 4, 1)[alive]).all()
    assert (r.item_tok[items[alive], 0] == np.repeat(forced[:, None], 4, 1)[alive]).all()
    assert not np.array_equal(items, np.asarray(free_items))
    for q in range(enc.shape[0]):
        ref_items, ref_scores = _reference_beam(r, params, enc[q], 4, first=int(forced[q]))
        n = len(ref_items)  # a first token with fewer than 4 items leaves dead beams (-1)
        np.testing.assert_array_equal(items[q, :n], ref_items)
        assert (items[q, n:] == -1).all()
        np.testing.assert_allclose(np.asarray(scores[q, :n]), ref_scores, rtol=1e-4, atol=1e-4)
    # through evaluate: the probe forces each user's own target's first token
    ex = eval_examples(_split(n_items=20), r.vocab, "test")
    got, tok, _ = evaluate.generate(r, params, ex, beam=4, given_first=True, progress=False)
    want = r.item_tok[ex.target, 0]
    assert ((tok[..., 0] == want[:, None]) | (got < 0)).all()


def test_head_and_tail_partition_the_users():
    sids = _catalogue(n=20, seed=1)
    r, params = build_retriever(tiny_cfg(), sids, seed=5)
    ex = eval_examples(_split(n_items=20), r.vocab, "test")
    layer2 = sids[:, 1]
    head = np.array([0, 2])
    res = evaluate.evaluate(r, params, ex, beam=10, ks=(1, 5, 10), head_tokens=head, layer2_codes=layer2,
                            progress=False)
    h, t, a = res["head"], res["tail"], res["metrics"]
    is_head = np.isin(layer2[ex.target], head)
    assert h["users"] == is_head.sum() and t["users"] == (~is_head).sum() and h["users"] * t["users"] > 0
    assert h["users"] + t["users"] == a["users"] == len(ex)
    for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10"):
        assert (h[k] * h["users"] + t[k] * t["users"]) / a["users"] == pytest.approx(a[k], abs=1e-12)
    assert 0 < a["recall@10"] < 1


def test_constrained_never_invalid_unconstrained_measured():
    sids = _catalogue(n=20)
    r, params = build_retriever(tiny_cfg(), sids, seed=1)
    sp = _split(n_items=20)
    ex = eval_examples(sp, r.vocab, "test")
    items, tokens, _ = evaluate.generate(r, params, ex, beam=8, progress=False)
    assert (items >= 0).all()
    for i in range(len(ex)):
        for j in range(8):
            assert r.index.lookup(tokens[i, j]) == items[i, j]
    inv = evaluate.invalid_ratio(r, params, ex, beam=8, ks=(1, 5), progress=False)
    # the ratio against an independent membership test of the unconstrained decoded rows
    _, free, _ = evaluate.generate(r, params, ex, beam=8, constrained=False, progress=False)
    catalogue = {tuple(row) for row in r.item_tok.tolist()}
    member = np.array([[tuple(free[i, j]) in catalogue for j in range(8)] for i in range(len(ex))])
    for k in (1, 5):
        assert inv[f"invalid@{k}"] == pytest.approx(1.0 - member[:, :k].mean())
    assert inv["invalid@5"] > 0.0  # an untrained model hallucinates


def test_invalid_ids_cut_decoded_sequences_at_eos():
    """Variable-length SIDs (top@K): positions after EOS are never trained, so what a model writes
    there must not make a catalogue SID count as invalid; a wrong token before EOS still does."""
    rng = np.random.default_rng(0)
    codes = np.unique(rng.integers(0, 6, (150, 3)), axis=0)
    sids = top_k_removal(codes, 6, 2).sids
    v = SidVocab.from_sids(sids, 4)
    assert v.variable_length
    tok = item_tokens(sids, v)
    ix = PrefixIndex.build(tok)
    short = int(np.flatnonzero((tok == EOS).argmax(1) < tok.shape[1] - 1)[0])  # EOS before the last column
    eos = int((tok[short] == EOS).argmax())
    seqs = np.stack([tok[short], tok[short], tok[short]])
    seqs[1, eos + 1:] = tok[0, 0]  # junk after EOS: still this item
    seqs[2, eos - 1] = PAD  # a missing token before EOS: not an item
    valid = evaluate.valid_mask(ix, seqs[None])
    assert valid.tolist() == [[True, True, False]]
    assert ix.lookup(seqs[1]) == -1  # the raw trie walk alone would call it invalid


def test_dropout_rate_scale_and_sharding():
    x = jnp.ones((64, 33, 130))  # last axis not a multiple of 4 draws per word
    key = jax.random.key(3)
    y = np.asarray(dropout(x, 0.1, key))
    p = 26 / 256  # 0.1 rounded to the 8-bit grid
    se = (p * (1 - p) / y.size) ** 0.5
    assert abs((y == 0).mean() - p) < 5 * se
    assert abs(y.mean() - 1.0) < 0.01 and np.allclose(y[y != 0], 256 / 230)
    # the mask is not one pattern repeated across rows or features
    assert not np.array_equal(y[0], y[1]) and not np.array_equal(y[..., :4], y[..., 4:8])
    np.testing.assert_array_equal(y, np.asarray(dropout(x, 0.1, key)))
    assert not np.array_equal(y, np.asarray(dropout(x, 0.1, jax.random.key(4))))
    assert dropout(x, 0.1, None) is x and dropout(x, 0.0, key) is x
    mesh = sharding.data_mesh()  # the same mask when the batch is split over 8 devices
    ys = jax.jit(lambda a: dropout(a, 0.1, key))(sharding.shard_batch(np.ones((64, 33, 130), np.float32), mesh))
    np.testing.assert_array_equal(np.asarray(ys), y)


def test_metrics_by_hand():
    preds = np.array([[3, 1, 2], [0, 5, 6], [7, 8, 9]])
    tgt = np.array([1, 0, 4])
    m = recall_ndcg(preds, tgt, ks=(1, 2, 3))
    assert m["recall@1"] == pytest.approx(1 / 3) and m["recall@2"] == pytest.approx(2 / 3)
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["ndcg@3"] == pytest.approx((1 / np.log2(3) + 1) / 3)
    assert recall_ndcg(preds, tgt, ks=(3,), mask=np.array([True, False, False]))["recall@3"] == 1.0
    ranks = hit_ranks(preds, tgt)  # per-user values average to the aggregate metrics
    for metric in ("recall@2", "ndcg@3"):
        assert per_user(ranks, metric).mean() == pytest.approx(m[metric])


def test_paired_standard_error_and_bootstrap_interval():
    rng = np.random.default_rng(0)
    a = (rng.random(4000) < 0.10).astype(float)
    b = np.where(rng.random(4000) < 0.5, a, (rng.random(4000) < 0.12).astype(float))  # correlated with a
    mu, se = mean_se(b - a)
    lo, hi = bootstrap_interval(b - a, resamples=2000)
    # the percentile interval of a mean of 4,000 users is close to mean +- 1.96 SE
    assert lo < mu < hi and abs((hi - lo) / (2 * 1.96 * se) - 1) < 0.1
    assert bootstrap_interval(np.full(50, 0.25)) == (0.25, 0.25)
    assert bootstrap_interval(b - a, seed=3) == bootstrap_interval(b - a, seed=3)


def test_prefix_index_scales_without_dense_tables():
    rng = np.random.default_rng(0)
    codes = np.unique(rng.integers(0, 4096, (200_000, 3)), axis=0)
    sids = np.concatenate([codes, np.zeros((len(codes), 1), int)], 1)
    v = SidVocab.from_sids(sids)
    ix = PrefixIndex.build(item_tokens(sids, v))
    assert ix.num_nodes < 5 * len(codes) + 1  # linear in the catalogue, not 4096^3
    assert ix.lookup(item_tokens(sids[123:124], v)[0]) == 123


def test_training_examples_never_use_valid_or_test_targets():
    sp = _split()
    v = SidVocab.from_sids(_catalogue(), 16)
    H = 3  # shorter than most training parts, so windows really slide
    ex = train_examples(sp, v, max_history=H)
    for u in range(sp.num_users):
        rows = np.flatnonzero(ex.user == u)
        train = sp.train[u]
        assert ex.target[rows].tolist() == train[1:].tolist()
        assert rows.size == len(train) - 1
        assert (ex.user_token[rows] == v.user_offset + sp.user_tokens[u]).all()
        # example j: the (at most H) training items right before target j, oldest first, -1 after
        for j, row in enumerate(rows, start=1):
            want = train[max(0, j - H):j].tolist()
            assert ex.history[row].tolist() == want + [-1] * (H - len(want))
    # nothing of the validation or test target of any user enters training
    assert sum(len(t) - 1 for t in sp.train) == len(ex)


def test_subsequence_augmentation_enumerates_every_window():
    sp = _split()
    v = SidVocab.from_sids(_catalogue(), 16)
    H = 3
    ex = train_examples(sp, v, max_history=H, augment="subsequences")
    got = sorted((int(u), tuple(h[h >= 0].tolist()), int(t)) for u, h, t in zip(ex.user, ex.history, ex.target))
    # brute force: every contiguous window s[j:i] of at most H items of a training part, then s[i]
    want = sorted((u, tuple(s[j:i].tolist()), int(s[i])) for u, s in enumerate(sp.train)
                  for i in range(1, len(s)) for j in range(i) if i - j <= H)
    assert got == want
    # the same targets as the prefix examples: nothing of validation or test enters training
    pre = train_examples(sp, v, max_history=H)
    assert set(zip(ex.user.tolist(), ex.target.tolist())) == set(zip(pre.user.tolist(), pre.target.tolist()))
    with pytest.raises(DataError, match="augment"):
        train_examples(sp, v, H, augment="windows")


def test_user_tokens_fold_onto_the_configured_buckets():
    sp = _split()
    v16, v1 = SidVocab.from_sids(_catalogue(), 16), SidVocab.from_sids(_catalogue(), 1)
    for which in ("validation", "test"):
        assert (eval_examples(sp, v1, which).user_token == v1.user_offset).all()  # one shared token
        t = eval_examples(sp, v16, which).user_token
        assert ((t >= v16.user_offset) & (t < v16.size)).all() and np.unique(t).size > 1
    assert (train_examples(sp, v1).user_token == v1.user_offset).all()
    assert (query_examples([7, 123], [[0], [1]], v16, 12).user_token
            == v16.user_offset + np.array([7, 123 % 16])).all()


def test_cosine_schedule_anneals_to_the_final_fraction():
    from rqsid_jax.retrieval.train import schedule
    c = tiny_cfg(learning_rate=0.004, warmup_steps=10, num_steps=110, lr_schedule="cosine",
                 final_lr_fraction=0.1)
    lr = np.array([float(schedule(c)(s)) for s in range(111)])
    assert lr[0] == 0.0 and np.isclose(lr[10], 0.004) and np.isclose(lr[110], 0.0004)
    assert (np.diff(lr[:11]) > 0).all() and (np.diff(lr[10:]) < 0).all()
    np.testing.assert_allclose(lr[60], 0.0004 + 0.5 * 0.0036, rtol=1e-6)  # half-way down the cosine
    isq = tiny_cfg(learning_rate=0.004, warmup_steps=10)
    np.testing.assert_allclose(float(schedule(isq)(40)), 0.004 * 0.5, rtol=1e-6)  # sqrt(10/40)


def test_leave_one_out_edge_cases():
    # three interactions (the fewest that split), the history cap exactly reached, and past it
    H = 4
    seqs = [np.array([5, 6, 7], np.int32), np.arange(H + 2, dtype=np.int32), np.arange(H + 4, dtype=np.int32),
            np.array([1, 2], np.int32)]
    ds = SequenceDataset("t", ItemTable.bare([str(i) for i in range(12)]), ["a", "b", "c", "short"], seqs)
    sp = ds.split(max_history=H)
    assert sp.user_ids == ["a", "b", "c"]  # two interactions cannot be split: left out
    assert sp.train[0].tolist() == [5] and sp.valid_history[0].tolist() == [5]
    assert (sp.valid_target[0], sp.test_target[0]) == (6, 7) and sp.test_history[0].tolist() == [5, 6]
    # b: validation history is exactly H items, the test history drops the oldest to stay at H
    assert sp.valid_history[1].tolist() == [0, 1, 2, 3] and sp.valid_target[1] == 4
    assert sp.test_history[1].tolist() == [1, 2, 3, 4] and sp.test_target[1] == 5
    # c: both histories capped to the latest H items
    assert sp.valid_history[2].tolist() == [2, 3, 4, 5] and sp.valid_target[2] == 6
    assert sp.test_history[2].tolist() == [3, 4, 5, 6] and sp.test_target[2] == 7
    v = SidVocab.from_sids(_catalogue(), 16)
    ex = train_examples(sp, v, max_history=H)
    assert (ex.user == 0).sum() == 0  # one training item: no (history, next item) pair
    val = eval_examples(sp, v, "validation", H)
    assert val.history[0].tolist() == [5, -1, -1, -1] and val.history[1].tolist() == [0, 1, 2, 3]
    assert eval_examples(sp, v, "test", H).history[2].tolist() == [3, 4, 5, 6]


def test_collator_encoder_layout_for_variable_length_sids():
    codes = np.array([[0, 1, 2], [1, 0, 3], [2, 1, 0], [3, 2, 1]])
    sids = top_k_removal(codes, 4, 1).sids  # layer-2 token 1 (items 0 and 2) is dropped
    v = SidVocab.from_sids(sids, 16)
    tok = item_tokens(sids, v)
    assert v.variable_length and tok.shape == (4, 5)
    lens = (tok != PAD).sum(1)
    assert lens.tolist() == [4, 5, 4, 5]  # c1 c3 coll EOS vs c1 c2 c3 coll EOS
    ex = query_examples([3], [[0, 1, 2]], v, 4)
    # token input: the user token, then the items' real tokens back to back (no inner PAD)
    enc = Collator(ex, tok, [13, 16], 1)(np.array([0]))["encoder"][0]
    real = [t for i in (0, 1, 2) for t in tok[i] if t != PAD]
    assert enc.tolist() == [v.user_offset + 3] + real + [PAD] * (16 - 1 - len(real))
    assert enc.size == 16  # 1 + 4 + 5 + 4 = 14 tokens do not fit the first bucket (13)
    ex2 = query_examples([3], [[0, 2]], v, 4)
    assert Collator(ex2, tok, [9, 16], 1)(np.array([0]))["encoder"].shape == (1, 9)  # 1 + 4 + 4 fits
    # item input: each item keeps its fixed 5-token slot, PAD where its SID is shorter
    enc = Collator(ex, tok, [16], 1, compact=False)(np.array([0]))["encoder"][0]
    assert enc.tolist() == [v.user_offset + 3] + tok[[0, 1, 2]].ravel().tolist()


def test_bad_queries():
    v = SidVocab.from_sids(_catalogue(), 16)
    with pytest.raises(DataError, match="query 1: unknown item index 99"):
        query_examples([0, 1], [[1, 2], [99]], v, 12)
    ex = query_examples([0], [[]], v, 12)  # empty history: the user token alone
    col = Collator(ex, item_tokens(_catalogue(), v), [16], 4)
    b = col(np.array([0, -1, -1, -1]))
    assert b["encoder"][0, 0] == v.user_offset and (b["encoder"][0, 1:] == PAD).all()


def test_weight_decay_only_on_kernels():
    # With zero gradients AdamW's update is -lr * wd * param where decay applies, else exactly 0.
    cfg = tiny_cfg(weight_decay=0.5, warmup_steps=1)
    _, params = build_retriever(cfg, _catalogue())
    tx = optimizer(cfg)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    flat = {jax.tree_util.keystr(p): (np.asarray(u), np.asarray(w)) for (p, u), w in
            zip(jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(params))}
    decayed = {k for k, (u, _) in flat.items() if np.abs(u).max() > 0}
    assert decayed and all("kernel" in k for k in decayed)
    assert any("embed" in k for k in flat) and not any("embed" in k or "ln" in k or "pos" in k for k in decayed)
    for k in decayed:
        u, w = flat[k]
        np.testing.assert_allclose(u, -cfg.learning_rate * 0.5 * w, rtol=1e-5, atol=1e-9)


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    sids, sp = _catalogue(), _split()
    _, full, _ = train_retriever(tiny_cfg(eval_every=0), sids, sp, str(tmp_path / "a"), progress=False)
    train_retriever(tiny_cfg(eval_every=0), sids, sp, str(tmp_path / "b"), stop_after=12, progress=False)
    _, resumed, _ = train_retriever(tiny_cfg(eval_every=0), sids, sp, str(tmp_path / "b"), progress=False)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # without validation the last parameters are the "best" checkpoint the evaluation stage
    # loads (there used to be none, and evaluation failed)
    from rqsid_jax import checkpointing
    mngr = checkpointing.manager(str(tmp_path / "a" / "best"), max_to_keep=1)
    best, step = checkpointing.restore(mngr, full)
    assert step == tiny_cfg().num_steps
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(best)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_training_learns_and_selects_best(tmp_path):
    sids = _catalogue()
    # Deterministic sequences: item i is always followed by item (i + 1) % 12.
    seqs = [np.array([(s + k) % 12 for k in range(8)], np.int32) for s in range(12) for _ in range(6)]
    ds = SequenceDataset("t", ItemTable.bare([str(i) for i in range(12)]), [f"u{i}" for i in range(72)], seqs)
    sp = ds.split(buckets=16)
    cfg = tiny_cfg(num_steps=200, eval_every=25, learning_rate=3e-3, warmup_steps=10, max_history=4)
    r, best, hist = train_retriever(cfg, sids, sp, str(tmp_path), progress=False)
    res = evaluate.evaluate(r, best, eval_examples(sp, r.vocab, "test", 4), beam=5, ks=(1, 5), progress=False)
    assert res["metrics"]["recall@5"] >= 0.75  # chance is 5/12
    scores = [h["val_ndcg@5"] for h in hist]
    assert len(scores) == 8 and max(scores) > 0.5
    # "improved" marks exactly the running maxima, and the returned parameters are the argmax's:
    # re-evaluating them on the validation users reproduces the best score
    s32 = np.float32(scores)
    assert [h["improved"] for h in hist] == [bool(s > max(s32[:i], default=-1.0)) for i, s in enumerate(s32)]
    val = evaluate.evaluate(r, best, eval_examples(sp, r.vocab, "validation", 4), beam=5, ks=(5,), progress=False)
    assert val["metrics"]["ndcg@5"] == pytest.approx(max(scores), abs=1e-9)


def test_training_log_keeps_the_curve_across_a_resume(tmp_path):
    from rqsid_jax.retrieval import curves
    path = str(tmp_path / "log.jsonl")
    for step in (10, 20):
        curves.append(path, {"step": step, "train_loss": 5.0 - step / 10})
    curves.append(path, {"step": 20, "val_recall@10": 0.1, "val_ndcg@10": 0.05})
    # Killed after step 20's checkpoint ... resumed from step 10: step 20 is logged again.
    curves.append(path, {"step": 20, "train_loss": 3.5})
    with open(path, "a") as f:
        f.write('{"step": 30, "train_lo')  # torn line of a kill mid-write
    train, val = curves.read(path)
    assert [(r["step"], r["train_loss"]) for r in train] == [(10, 4.0), (20, 3.5)]
    assert val == [{"step": 20, "val_recall@10": 0.1, "val_ndcg@10": 0.05}]
    png = curves.learning_curve_figure(train, val, str(tmp_path / "fig" / "curve.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_focal_and_mile_losses_by_hand():
    from rqsid_jax.retrieval.train import token_loss
    logits = np.array([[[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]]], np.float32)
    target = np.array([[0, 1]])
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    pt = np.take_along_axis(p, target[..., None], -1)[..., 0]
    ce = -np.log(pt)
    ent = -(p * np.log(p)).sum(-1)
    for kind, gamma, want in [("ce", 0.0, ce), ("focal", 2.0, (1 - pt) ** 2 * ce), ("mile", 1.0, ent * ce),
                              ("mile", 2.0, ent ** 2 * ce)]:
        got = np.asarray(token_loss(jnp.asarray(logits), jnp.asarray(target), kind, gamma))
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # label smoothing eps: (1 - eps) x CE + eps x the mean of -log p over the output vocabulary
    eps = 0.1
    got = np.asarray(token_loss(jnp.asarray(logits), jnp.asarray(target), "ce", 0.0, eps))
    np.testing.assert_allclose(got, (1 - eps) * ce - eps * np.log(p).mean(-1), rtol=1e-5)


def _scripted_validation(monkeypatch, scores):
    """Replaces the validation pass inside training by a scripted sequence of NDCG@5 values."""
    it = iter(scores)

    def fake(*args, **kwargs):
        s = next(it)
        return {"metrics": {"recall@5": s, "ndcg@5": s}}

    monkeypatch.setattr(evaluate, "evaluate", fake)


def test_best_checkpoint_is_the_argmax_and_survives_a_resume(tmp_path, monkeypatch):
    sids, sp = _catalogue(), _split()
    # evaluations at steps 6, 12, 18, 24, 30; the best at step 12, the last two worse
    cfg = tiny_cfg(num_steps=30, eval_every=6, patience=2)
    _, at12, _ = train_retriever(tiny_cfg(num_steps=12, eval_every=0), sids, sp, str(tmp_path / "ref"),
                                 progress=False)
    _scripted_validation(monkeypatch, [0.1, 0.4, 0.3, 0.2, 0.9])
    _, best, hist = train_retriever(cfg, sids, sp, str(tmp_path / "a"), progress=False)
    # patience 2 stops after step 24, before the step-30 evaluation would have won
    assert [h["step"] for h in hist] == [6, 12, 18, 24]
    for a, b in zip(jax.tree.leaves(at12), jax.tree.leaves(best)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # killed after step 18 and resumed: the best score, its parameters and the patience counter
    # come back (a reset counter would train on to step 30 and pick its score)
    _scripted_validation(monkeypatch, [0.1, 0.4, 0.3])
    train_retriever(cfg, sids, sp, str(tmp_path / "b"), stop_after=18, progress=False)
    _scripted_validation(monkeypatch, [0.2, 0.9])
    _, resumed, hist_b = train_retriever(cfg, sids, sp, str(tmp_path / "b"), progress=False)
    assert [h["step"] for h in hist_b] == [24]
    for a, b in zip(jax.tree.leaves(at12), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
