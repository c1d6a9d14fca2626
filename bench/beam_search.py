"""Constrained beam search throughput at TIGER size on Beauty test queries (queries/s)."""
import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from bench.common import emit, median  # noqa: E402
from bench.retriever_train import sids_for  # noqa: E402
from rqsid_jax.data import load_dataset  # noqa: E402
from rqsid_jax.retrieval.beam import DeviceIndex, run_beam  # noqa: E402
from rqsid_jax.retrieval.data import Collator, eval_examples  # noqa: E402
from rqsid_jax.retrieval.train import build, default_config  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data_dir", default=os.environ.get("RQSID_DATA_DIR", "../shared/data/amazon2014"))
    ap.add_argument("--sids", default="")
    ap.add_argument("--beams", default="10,20,50")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=6)
    a = ap.parse_args()
    ds = load_dataset("beauty", a.data_dir)
    cfg = default_config()
    r, params = build(cfg, sids_for(ds.num_items, a.sids))
    ex = eval_examples(ds.split(), r.vocab, "test")
    col = Collator(ex, r.item_tok, r.buckets, a.batch)
    plan = col.plan(0, 0)[: a.batches]
    batches = [jnp.asarray(col(p)["encoder"]) for p in plan]
    ix = DeviceIndex.from_index(r.index)
    for beam in [int(b) for b in a.beams.split(",")]:
        for b in batches:  # compile every shape once
            jax.block_until_ready(run_beam(r.graphdef, params, b, ix, beam))
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            for b in batches:
                out = run_beam(r.graphdef, params, b, ix, beam)
            jax.block_until_ready(out)
            rates.append(a.batch * len(batches) / (time.perf_counter() - t))
        emit("beam_search", beam=beam, queries_per_s=median(rates), queries_per_s_all=[round(x) for x in rates],
             target=350 if beam <= 20 else None, batch=a.batch, constrained=True)


if __name__ == "__main__":
    main()
