"""Shared benchmark helpers: medians of repeated timings, one JSON line per result."""
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
