"""Streaming SID assignment from a memory-mapped .npy: peak memory and time vs N.

Each N runs in a fresh process (so ru_maxrss is that run's peak) with a TIGER-size encoder
(64-d input to keep the 10M-row file at 2.4 GiB on disk). Prints one JSON line per N.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = __file__.rsplit("/bench/", 1)[0]


def vm_hwm_gib() -> float:
    """Peak RSS of this process image. (ru_maxrss is not used: on Linux it carries over the
    parent's peak across fork+exec, and the parent touched the whole file while writing it.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 20  # kB -> GiB
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 2 ** 20


def child(path: str, n: int, chunk: int):
    sys.path.insert(0, ROOT)
    import jax
    import numpy as np
    from flax import nnx
    from rqsid_jax.quantization.rqvae import RQVAE
    from rqsid_jax.sid.assign import assign_codes_streaming

    dim = np.load(path, mmap_mode="r").shape[1]
    model = RQVAE(dim, rngs=nnx.Rngs(0))
    enc = jax.jit(model.codes)
    out = path.replace(".npy", ".codes.npy")
    t = time.perf_counter()
    codes = assign_codes_streaming(enc, path, out, 3, chunk_size=chunk, progress=False)
    dt = time.perf_counter() - t
    peak = vm_hwm_gib()
    print(json.dumps({"bench": "assign_memmap", "n": n, "seconds": dt, "items_per_s": n / dt,
                      "peak_rss_gib": peak, "target_peak_gib": 2.0, "codes_shape": list(codes.shape)}), flush=True)
    os.remove(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], int(a.child[1]), a.chunk)
    import numpy as np
    d = tempfile.mkdtemp()
    for n in [int(s) for s in a.sizes.split(",")]:
        path = os.path.join(d, f"emb_{n}.npy")
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, a.dim))
        rng = np.random.default_rng(0)
        for s in range(0, n, 1_000_000):  # written in blocks: the writer stays small too
            mm[s:s + 1_000_000] = rng.standard_normal((min(1_000_000, n - s), a.dim), dtype=np.float32)
        mm.flush()
        del mm
        subprocess.run([sys.executable, __file__, "--child", path, str(n), "--chunk", str(a.chunk)], check=True)
        os.remove(path)


if __name__ == "__main__":
    main()
