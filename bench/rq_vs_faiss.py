"""Greedy residual encode of 1M 32-d vectors with 3x256 codebooks: rqsid_jax vs faiss.

Both encode with the same codebooks (trained by faiss.ResidualQuantizer(32, 3, 8), beam 1),
so equal reconstruction error is checked rather than assumed. faiss is an optional bench
dependency (pip install faiss-cpu).
"""
import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from bench.common import emit, median, timeit  # noqa: E402
from rqsid_jax.quantization.kernels import decode, residual_encode  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=65536)
    a = ap.parse_args()
    try:
        import faiss
    except ImportError:
        emit("rq_vs_faiss", skipped="faiss not installed (pip install faiss-cpu)")
        return
    rng = np.random.default_rng(0)
    # Clustered data so the codebooks matter (pure Gaussian would make RQ nearly useless).
    centers = rng.standard_normal((1000, 32)).astype(np.float32) * 2
    x = (centers[rng.integers(0, 1000, a.n)] + rng.standard_normal((a.n, 32))).astype(np.float32)
    rq = faiss.ResidualQuantizer(32, 3, 8)
    rq.max_beam_size = 1
    rq.train(x[:100_000])
    books = faiss.vector_to_array(rq.codebooks).reshape(3, 256, 32)

    def faiss_run():
        return rq.compute_codes(x)

    codes_f = faiss_run()
    t_f = timeit(faiss_run, 3)
    recon_f = rq.decode(codes_f)
    mse_f = float(np.mean((x - recon_f) ** 2))

    enc = jax.jit(lambda b, x: residual_encode(b, x, chunk_size=a.chunk)[0])
    bj = jnp.asarray(books)
    xj = jax.device_put(x)

    def ours():
        return jax.block_until_ready(enc(bj, xj))

    codes_o = np.asarray(ours())
    t_o = timeit(ours, 3)
    mse_o = float(np.mean((x - np.asarray(decode(bj, jnp.asarray(codes_o)))) ** 2))
    emit("rq_vs_faiss", n=a.n, ours_vectors_per_s=a.n / median(t_o), faiss_vectors_per_s=a.n / median(t_f),
         speedup=median(t_f) / median(t_o), ours_mse=mse_o, faiss_mse=mse_f,
         faiss_code_bytes=int(codes_f.shape[1]), faiss_threads=faiss.omp_get_max_threads())


if __name__ == "__main__":
    main()
