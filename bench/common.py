"""Shared benchmark helpers: medians of repeated timings, one JSON line per result."""
import argparse
import json
import os
import platform
import statistics
import time

import jax


def timeit(fn, repeats: int = 5, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def emit(name: str, **fields) -> dict:
    rec = {"bench": name, **fields, "cpus": os.cpu_count(), "machine": platform.machine()}
    print(json.dumps(rec), flush=True)
    return rec


def median(xs):
    return statistics.median(xs)


def gemm_gflops(dtype: str, m: int = 7424, k: int = 128, n: int = 1024, repeats: int = 5) -> float:
    """Measured GFLOP/s of one [m, k] x [k, n] product in `dtype` with float32 accumulation (the
    matmul peak a bench reports its fraction of). Best of `repeats` after a warm-up."""
    from rqsid_jax.retrieval.precision import einsum

    f = jax.jit(lambda x, w: einsum("mk,kn->mn", x, w, dtype))
    x = jax.random.normal(jax.random.key(0), (m, k))
    w = jax.random.normal(jax.random.key(1), (k, n))
    return 2.0 * m * k * n / min(timeit(lambda: jax.block_until_ready(f(x, w)), repeats)) / 1e9


def beauty_parser(sids: bool = True) -> argparse.ArgumentParser:
    """Arguments every Beauty retriever bench takes: the data directory and, optionally, a SID
    table (.npy; default: random unique 3-level SIDs plus a zero collision token)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--data_dir", default=os.environ.get("RQSID_DATA_DIR", "../shared/data/amazon2014"))
    if sids:
        ap.add_argument("--sids", default="")
    return ap


def beauty_inputs(a):
    """(dataset, split, SID table, data-parallel mesh) for parsed beauty_parser() arguments."""
    import numpy as np

    from rqsid_jax import sharding
    from rqsid_jax.data import load_dataset

    ds = load_dataset("beauty", a.data_dir)
    path = getattr(a, "sids", "")
    if path and os.path.exists(path):
        sids = np.load(path)
    else:
        codes = np.random.default_rng(0).choice(256 ** 3, ds.num_items, replace=False)
        sids = np.stack([codes // 65536, codes // 256 % 256, codes % 256, np.zeros(ds.num_items, int)], 1)
    return ds, ds.split(), sids.astype(np.int32), sharding.data_mesh()
