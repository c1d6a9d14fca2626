"""Shared benchmark helpers: medians of repeated timings, one JSON line per result."""
import json
import os
import platform
import statistics
import time


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
