"""Does bfloat16 train the retriever as well as float32? The same N steps on Beauty (same
batches, same dropout keys, same initial parameters) in each precision, then the teacher-forced
validation loss of both, each computed in float32 from the float32 master parameters.

Prints one JSON line per precision and one with their relative difference.
"""
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from bench.common import beauty_inputs, beauty_parser, emit  # noqa: E402
from bench.retriever_train import KEYS  # noqa: E402
from rqsid_jax import sharding  # noqa: E402
from rqsid_jax.retrieval.input_pipeline import eval_examples, sample_rows, train_examples  # noqa: E402
from rqsid_jax.retrieval.train import build_retriever, default_config, make_eval_loss, make_train_step, optimizer  # noqa: E402


def main():
    ap = beauty_parser()
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--encoder_input", default="tokens")
    ap.add_argument("--val_users", type=int, default=5000)
    a = ap.parse_args()
    ds, sp, sids, mesh = beauty_inputs(a)
    cfg32 = default_config()
    cfg32.update(dtype="float32", encoder_input=a.encoder_input)
    r32, _ = build_retriever(cfg32, sids, cfg32.seed)
    val = eval_examples(sp, r32.vocab, "validation")
    val = val.subset(sample_rows(len(val), a.val_users, [cfg32.seed, 7]))
    vcol = r32.collator(val, 250)
    f = jax.jit(make_eval_loss(r32, cfg32))
    losses = {}
    for dt in ("float32", "bfloat16"):
        cfg = default_config()
        cfg.update(dtype=dt, encoder_input=a.encoder_input, learning_rate=0.002, warmup_steps=200)
        r, params = build_retriever(cfg, sids, cfg.seed)
        tx = optimizer(cfg)
        state = sharding.replicate({"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)}, mesh)
        step = jax.jit(make_train_step(r, cfg, tx), donate_argnums=0)
        col = r.collator(train_examples(sp, r.vocab), cfg.batch_size)
        key = jax.random.key(cfg.seed)
        t0 = time.time()
        for i, b in enumerate(col.dataset(col.plan(cfg.seed, 0)[: a.steps], 0, 1)):
            state, loss = step(state, sharding.shard_batch({k: b[k] for k in KEYS}, mesh), jax.random.fold_in(key, i))
        train_loss = float(loss)
        train_s = time.time() - t0
        # validation loss in float32 for both (the checkpointed parameters are float32 in both)
        tot = cnt = 0.0
        for idx in vcol.plan(0, 0, shuffle=False):
            b = vcol(idx)
            s, c = f(state["params"], {k: jnp.asarray(b[k]) for k in KEYS})
            tot, cnt = tot + float(s), cnt + float(c)
        losses[dt] = tot / cnt
        emit("precision_parity", dtype=dt, encoder_input=a.encoder_input, steps=a.steps,
             last_train_loss=round(train_loss, 4), val_loss=round(losses[dt], 4), val_users=len(val),
             train_s=round(train_s, 1))
    rel = abs(losses["bfloat16"] - losses["float32"]) / losses["float32"]
    emit("precision_parity", relative_val_loss_difference=round(rel, 5), target=0.01, within_target=bool(rel <= 0.01))


if __name__ == "__main__":
    main()
