"""RQ-VAE training throughput at TIGER size: 768-d input, 512-256-128-32, 3x256 codes, batch 1024.

Times the compiled train step (forward, backward, AdamW update) on random inputs, as the
training loop runs it; reports the median samples/s over several windows.
"""
import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from bench.common import emit, median, timeit  # noqa: E402
from rqsid_jax import sharding  # noqa: E402
from rqsid_jax.quantization.train import Trainer, default_config, init_state, make_optimizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    cfg = default_config()
    cfg.batch_size = a.batch
    x = np.random.default_rng(0).standard_normal((a.batch * 4, a.dim)).astype(np.float32)
    mesh = sharding.data_mesh()
    graphdef, state = init_state(cfg, x, mesh, jax.random.key(0))
    step = jax.jit(Trainer(cfg, graphdef, make_optimizer(cfg), mesh).train_step, donate_argnums=0)
    batches = [sharding.shard_batch(x[i * a.batch:(i + 1) * a.batch], mesh) for i in range(4)]
    holder = {"s": state}
    ok = jnp.bool_(True)  # no earlier step was non-finite

    def run():
        s = holder["s"]
        for i in range(a.steps):
            s, m = step(s, batches[i % 4], ok)
        jax.block_until_ready(m["loss"])
        holder["s"] = s

    times = timeit(run, a.repeats)
    sps = [a.steps * a.batch / t for t in times]
    # fwd+bwd ~ 3x the forward matmul FLOPs of encoder + decoder (+ quantizer distances).
    dims = [a.dim, 512, 256, 128, 32]
    macs = 2 * sum(i * o for i, o in zip(dims[:-1], dims[1:])) + 3 * 256 * 32
    emit("rqvae_train", samples_per_s=median(sps), samples_per_s_all=[round(v) for v in sps],
         target=25000, batch=a.batch, input_dim=a.dim, gflops_per_s=median(sps) * 6 * macs / 1e9,
         devices=jax.device_count())


if __name__ == "__main__":
    main()
