"""Retriever training throughput at TIGER size on Beauty's real sliding-window examples.

Every variant (matmul precision x encoder input) trains on the same batches in one run, in
round-robin windows of steps (the machine is shared and noisy: each window of one variant sits
between windows of the others). Each variant's figure comes with its fraction of that
precision's matmul peak, measured by a GEMM probe in the same run (gemm_gflops).

Uses the real sequences (RQSID_DATA_DIR) and SIDs from a workdir when given (else random
unique 3x256 codes plus a collision column: the SID values do not change the compute).
"""
import sys
import time

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from bench.common import beauty_inputs, beauty_parser, emit, gemm_gflops, median  # noqa: E402
from rqsid_jax import sharding  # noqa: E402
from rqsid_jax.retrieval import precision  # noqa: E402
from rqsid_jax.retrieval.input_pipeline import train_examples  # noqa: E402
from rqsid_jax.retrieval.train import build_retriever, default_config, make_train_step, optimizer  # noqa: E402

KEYS = ("encoder", "target", "weight")


def mflop_per_example(cfg, r, enc_positions: float) -> float:
    """Training FLOPs per example: 6 x (matmul parameters touched per position x positions),
    plus the cross-attention keys/values of the memory and the attention products."""
    d, f, hd = cfg.d_model, cfg.mlp_dim, cfg.num_heads * cfg.head_dim
    dec = r.vocab.max_sid_tokens
    per_enc = 4 * d * hd + 2 * d * f + 2 * hd * enc_positions  # projections, MLP, scores + mix
    per_dec = 6 * d * hd + 2 * d * f + 2 * hd * (dec + enc_positions)
    cross_kv = 2 * d * hd * enc_positions
    out = r.vocab.user_offset  # logits over SID tokens only
    return 6 * (cfg.encoder_layers * per_enc * enc_positions
                + cfg.decoder_layers * (per_dec * dec + cross_kv) + d * out * dec) / 1e6


def main():
    ap = beauty_parser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20, help="steps per window")
    ap.add_argument("--repeats", type=int, default=3, help="windows per variant")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--encoder_inputs", default="tokens,items")
    ap.add_argument("--dropout", type=float, default=0.1)
    a = ap.parse_args()
    ds, sp, sids, mesh = beauty_inputs(a)
    peaks = {dt: gemm_gflops(dt) for dt in a.dtypes.split(",")}
    variants = {}
    for dt in a.dtypes.split(","):
        for inp in a.encoder_inputs.split(","):
            cfg = default_config()
            cfg.update(batch_size=a.batch, dropout=a.dropout, dtype=dt, encoder_input=inp)
            r, params = build_retriever(cfg, sids)
            tx = optimizer(cfg)
            state = sharding.replicate({"params": params, "opt_state": tx.init(params),
                                        "step": jax.numpy.int32(0)}, mesh)
            variants[(dt, inp)] = dict(cfg=cfg, r=r, state=state,
                                       step=jax.jit(make_train_step(r, cfg, tx), donate_argnums=0))
    # One batch sequence for every variant (fixed-length SIDs: token and item collation agree).
    first = next(iter(variants.values()))
    col = first["r"].collator(train_examples(sp, first["r"].vocab), a.batch)
    plan = col.plan(0, 0)
    n_batches = a.steps * a.repeats
    batches = [col(plan[i]) for i in range(n_batches)]
    by_shape = {b["encoder"].shape: b for b in batches}
    key = jax.random.key(0)
    for v in variants.values():  # compile every bucket shape met
        for b in by_shape.values():
            v["state"], loss = v["step"](v["state"], sharding.shard_batch({k: b[k] for k in KEYS}, mesh), key)
        jax.block_until_ready(loss)
        v["rates"] = []
    for rep in range(a.repeats):
        window = batches[rep * a.steps:(rep + 1) * a.steps]
        for v in variants.values():
            t = time.perf_counter()
            for i, b in enumerate(window):
                v["state"], loss = v["step"](v["state"], sharding.shard_batch({k: b[k] for k in KEYS}, mesh),
                                             jax.random.fold_in(key, i))
            jax.block_until_ready(loss)
            v["rates"].append(sum(float(b["weight"].sum()) for b in window) / (time.perf_counter() - t))
    width = first["r"].vocab.max_sid_tokens
    enc_tokens = float(np.mean([b["encoder"].shape[1] for b in batches]))
    for (dt, inp), v in variants.items():
        positions = enc_tokens if inp == "tokens" else 1 + (enc_tokens - 1) / width
        mflop = mflop_per_example(v["cfg"], v["r"], positions)
        sps = median(v["rates"])
        emit("retriever_train", dtype=dt, encoder_input=inp, samples_per_s=round(sps, 1),
             samples_per_s_all=[round(x) for x in v["rates"]], target=400 if inp == "tokens" else 1000,
             batch=a.batch, mean_encoder_positions=round(positions, 2), approx_mflop_per_example=round(mflop, 1),
             approx_gflops_per_s=round(sps * mflop / 1e3, 1), gemm_peak_gflops=round(peaks[dt], 1),
             fraction_of_peak=round(sps * mflop / 1e3 / peaks[dt], 3), dropout=a.dropout,
             steps_per_window=a.steps, fast_bf16_cpu=precision.cpu_has_fast_bf16(), backend=jax.default_backend())


if __name__ == "__main__":
    main()
