"""Constrained beam search throughput at TIGER size on Beauty test queries (queries/s)."""
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from bench.common import beauty_inputs, beauty_parser, emit, median  # noqa: E402
from rqsid_jax.retrieval.beam import DeviceIndex, run_beam  # noqa: E402
from rqsid_jax.retrieval.input_pipeline import eval_examples  # noqa: E402
from rqsid_jax.retrieval.train import build_retriever, default_config  # noqa: E402


def main():
    ap = beauty_parser()
    ap.add_argument("--beams", default="10,20,50")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--encoder_inputs", default="tokens,items")
    a = ap.parse_args()
    _, sp, sids, _ = beauty_inputs(a)
    variants = {}
    for dt in a.dtypes.split(","):
        for inp in a.encoder_inputs.split(","):
            cfg = default_config()
            cfg.update(dtype=dt, encoder_input=inp)
            variants[(dt, inp)] = build_retriever(cfg, sids)
    r = next(iter(variants.values()))[0]
    col = r.collator(eval_examples(sp, r.vocab, "test"), a.batch)
    batches = [jnp.asarray(col(p)["encoder"]) for p in col.plan(0, 0)[: a.batches]]
    ix = DeviceIndex.from_index(r.index)
    for beam in [int(b) for b in a.beams.split(",")]:
        for rv, params in variants.values():  # compile every shape once
            for b in batches:
                jax.block_until_ready(run_beam(rv.graphdef, params, b, ix, beam))
        rates = {k: [] for k in variants}
        for _ in range(3):  # round-robin: every variant sees the same load
            for k, (rv, params) in variants.items():
                t = time.perf_counter()
                for b in batches:
                    out = run_beam(rv.graphdef, params, b, ix, beam)
                jax.block_until_ready(out)
                rates[k].append(a.batch * len(batches) / (time.perf_counter() - t))
        for (dt, inp), rs in rates.items():
            emit("beam_search", beam=beam, dtype=dt, encoder_input=inp, queries_per_s=round(median(rs), 1),
                 queries_per_s_all=[round(x) for x in rs], target={10: 700, 20: 450}.get(beam), batch=a.batch,
                 constrained=True)


if __name__ == "__main__":
    main()
