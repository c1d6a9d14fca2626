"""Retriever training throughput at TIGER size on Beauty's real sliding-window examples.

Uses the real sequences (RQSID_DATA_DIR) and SIDs from a workdir when given (else random
unique 3x256 codes: the SID values do not change the compute). Reports the median samples/s
over several windows of steps, with the fraction of this CPU's fp32 limit it reaches.
"""
import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from bench.common import emit, median  # noqa: E402
from rqsid_jax import sharding  # noqa: E402
from rqsid_jax.data import load_dataset  # noqa: E402
from rqsid_jax.retrieval.data import Collator, train_examples  # noqa: E402
from rqsid_jax.retrieval.train import build, default_config, make_train_step, optimizer  # noqa: E402


def sids_for(n, path):
    if path and os.path.exists(path):
        return np.load(path)
    rng = np.random.default_rng(0)
    codes = rng.choice(256 ** 3, n, replace=False)
    c = np.stack([codes // 65536, codes // 256 % 256, codes % 256, np.zeros(n, int)], 1)
    return c.astype(np.int32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data_dir", default=os.environ.get("RQSID_DATA_DIR", "../shared/data/amazon2014"))
    ap.add_argument("--sids", default="")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peak_gflops", type=float, default=185.0)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--prng", default="", help="e.g. rbg / unsafe_rbg (jax_default_prng_impl)")
    a = ap.parse_args()
    if a.prng:
        jax.config.update("jax_default_prng_impl", a.prng)
    ds = load_dataset("beauty", a.data_dir)
    sp = ds.split()
    cfg = default_config()
    cfg.batch_size = a.batch
    cfg.dropout = a.dropout
    r, params = build(cfg, sids_for(ds.num_items, a.sids))
    ex = train_examples(sp, r.vocab)
    col = Collator(ex, r.item_tok, r.buckets, a.batch)
    plan = col.plan(0, 0)
    tx = optimizer(cfg)
    mesh = sharding.data_mesh()
    state = sharding.replicate({"params": params, "opt_state": tx.init(params), "step": jax.numpy.int32(0)}, mesh)
    step = jax.jit(make_train_step(r, cfg, tx), donate_argnums=0)
    it = iter(col.dataset(plan, 0, 2))
    key = jax.random.key(0)
    # warm-up: compile every bucket shape
    seen_shapes, i = set(), 0
    for b in col.dataset(plan, 0, 2):
        if b["encoder"].shape in seen_shapes:
            continue
        seen_shapes.add(b["encoder"].shape)
        state, loss = step(state, sharding.shard_batch({k: b[k] for k in ("encoder", "target", "weight")}, mesh), key)
        if len(seen_shapes) == len(r.buckets):
            break
    jax.block_until_ready(loss)
    rates, tokens = [], []
    for rep in range(a.repeats):
        t = time.perf_counter()
        n = ntok = 0
        for _ in range(a.steps):
            b = next(it)
            state, loss = step(state, sharding.shard_batch({k: b[k] for k in ("encoder", "target", "weight")}, mesh),
                               jax.random.fold_in(key, i))
            i += 1
            n += int(b["weight"].sum())
            ntok += b["encoder"].size
        jax.block_until_ready(loss)
        rates.append(n / (time.perf_counter() - t))
        tokens.append(ntok / (a.steps * a.batch))
    # FLOPs per example: 6 x params-touched-per-token x tokens (+ attention), from the model config.
    d, f, hd = cfg.d_model, cfg.mlp_dim, cfg.num_heads * cfg.head_dim
    enc_tok = median(tokens)
    dec_tok = r.vocab.max_sid_tokens
    per_enc_tok = 4 * d * hd + 2 * d * f
    out = r.vocab.user_offset  # logits over SID tokens only (model.ModelConfig.output_size)
    per_dec_tok = 6 * d * hd + 2 * d * f  # self-attention q/k/v/o, cross-attention q/o, MLP
    cross_kv = 2 * d * hd * enc_tok  # cross-attention keys/values of the memory, per decoder layer
    flops = 6 * (cfg.encoder_layers * per_enc_tok * enc_tok
                 + cfg.decoder_layers * (per_dec_tok * dec_tok + cross_kv) + d * out * dec_tok)
    sps = median(rates)
    emit("retriever_train", samples_per_s=sps, samples_per_s_all=[round(x) for x in rates], target=300,
         batch=a.batch, examples=len(ex), mean_padded_encoder_tokens=enc_tok,
         approx_mflop_per_example=flops / 1e6, approx_gflops_per_s=sps * flops / 1e9,
         fraction_of_peak=sps * flops / 1e9 / a.peak_gflops, peak_gflops_assumed=a.peak_gflops,
         dropout=a.dropout, prng=a.prng or "threefry")


if __name__ == "__main__":
    main()
