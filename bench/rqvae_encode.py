"""End-to-end encode throughput: 768-d item embeddings -> RQ-VAE codes [N, 3] (TIGER size)."""
import argparse
import sys

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from bench.common import emit, median, timeit  # noqa: E402
from flax import nnx  # noqa: E402
from rqsid_jax.quantization.rqvae import RQVAE  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=262144)
    ap.add_argument("--chunk", type=int, default=4096)  # fits in cache: 2048-8192 measured fastest
    ap.add_argument("--dim", type=int, default=768)
    a = ap.parse_args()
    model = RQVAE(a.dim, rngs=nnx.Rngs(0))
    enc = jax.jit(model.codes)
    x = np.random.default_rng(0).standard_normal((a.n, a.dim)).astype(np.float32)
    chunks = [jax.device_put(x[i:i + a.chunk]) for i in range(0, a.n, a.chunk)]

    def run():
        out = [enc(c) for c in chunks]
        jax.block_until_ready(out)

    times = timeit(run, 5)
    ips = [a.n / t for t in times]
    emit("rqvae_encode", items_per_s=median(ips), items_per_s_all=[round(v) for v in ips], target=140000,
         n=a.n, chunk=a.chunk, input_dim=a.dim)


if __name__ == "__main__":
    main()
