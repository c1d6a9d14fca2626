"""SASRec training-step time on Beauty's real training windows, per input length bucket, with
the full-catalogue cross-entropy and (same batches, same run) the sampled softmax over shared
negatives and the one-negative BCE, whose differences are what the catalogue softmax costs.
One JSON line per (loss, bucket) and an epoch estimate from the bucket mix."""
import argparse
import os
import sys
import time

import jax
import optax

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from bench.common import emit, median  # noqa: E402
from rqsid_jax.baseline import sasrec  # noqa: E402
from rqsid_jax.data import load_dataset  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data_dir", default=os.environ.get("RQSID_DATA_DIR", "../shared/data/amazon2014"))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--losses", default="ce,sampled_ce,bce")
    ap.add_argument("--negatives", type=int, default=2048, help="sampled_ce's shared negatives")
    a = ap.parse_args()
    ds = load_dataset("beauty", a.data_dir)
    sp = ds.split()
    cfg = sasrec.default_config()
    cfg.batch_size = a.batch
    ins, outs = sasrec.training_windows(sp, cfg.max_len)
    data = sasrec.Batches(ins, outs, cfg.bucket_lengths, a.batch)
    plan = data.plan(0, 0)
    by_len = {}
    for idx in plan:
        b = data(idx)
        by_len.setdefault(b["inputs"].shape[1], []).append(b)
    share = {length: len(bs) for length, bs in by_len.items()}
    for kind in a.losses.split(","):
        g, params = sasrec.build(cfg, ds.num_items)
        tx = optax.adamw(cfg.learning_rate)

        def step(st, batch, key, kind=kind, g=g, tx=tx):
            loss, grads = jax.value_and_grad(
                lambda p: sasrec.loss_fn(g, p, batch, key, kind, ds.num_items, a.negatives))(st[0])
            upd, opt = tx.update(grads, st[1], st[0])
            return (optax.apply_updates(st[0], upd), opt), loss

        f = jax.jit(step, donate_argnums=0)
        st = (params, tx.init(params))
        key = jax.random.key(0)
        per_step = {}
        for length, bs in sorted(by_len.items()):
            batches = (bs * a.steps)[: a.steps]
            st, loss = f(st, batches[0], key)  # compile
            jax.block_until_ready(loss)
            times = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                for i, b in enumerate(batches):
                    st, loss = f(st, b, jax.random.fold_in(key, i))
                jax.block_until_ready(loss)
                times.append((time.perf_counter() - t) / len(batches))
            per_step[length] = median(times)
            emit("sasrec_step", loss=kind, length=length, batch=a.batch, step_s=round(per_step[length], 4),
                 positions_per_s=round(a.batch * length / per_step[length]), items=ds.num_items)
        emit("sasrec_epoch", loss=kind, batch=a.batch, steps=len(plan),
             epoch_s=round(sum(share[k] * per_step[k] for k in share), 1))


if __name__ == "__main__":
    main()
