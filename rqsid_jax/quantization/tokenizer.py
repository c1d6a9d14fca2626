"""The tokenizer: fit an RQ-VAE or RQ-KMeans on item embeddings, and the encoder that turns
embeddings into codes. Each keeps its input normalisation with the model: the RQ-VAE as
statistics in its checkpoint, RQ-KMeans in `input_norm.npz` beside its codebooks."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import jax
import numpy as np

from rqsid_jax import workdir as wd
from rqsid_jax.errors import ConfigError
from rqsid_jax.quantization.kernels import residual_encode
from rqsid_jax.quantization.kmeans import rq_kmeans
from rqsid_jax.quantization.train import load_rqvae, train_rqvae


@dataclasses.dataclass(frozen=True)
class Encoder:
    """A fitted tokenizer: `codes(x)` [N, L], its codebook size, and `latents(x)` = (codebooks
    [L, M, d], the quantizer's input z [N, d])."""

    codes: Callable
    codebook_size: int
    latents: Callable


def input_norm(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (floored at 1e-6) of RQ-KMeans's input."""
    return x.mean(0), np.maximum(x.std(0), 1e-6)


def codebook_size(config) -> int:
    """The configured tokenizer's codebook size."""
    return config.rqvae.codebook_size if config.tokenizer == "rqvae" else config.rqkmeans.codebook_size


def _rqvae_logger(writer) -> Callable[[dict], None]:
    def log(m):
        if writer is not None:
            for k in ("loss", "recon", "codebook", "commitment"):
                writer.add_scalar(f"rqvae/{k}", m[k], m["step"])
            for level, p in enumerate(m["perplexity"]):
                writer.add_scalar(f"rqvae/perplexity_level{level + 1}", p, m["step"])
                writer.add_scalar(f"rqvae/usage_level{level + 1}", m["usage_fraction"][level], m["step"])
            writer.flush()
    return log


def stage(ctx) -> dict:
    """The tokenizer stage: trains the RQ-VAE (checkpointed, resumable) or fits RQ-KMeans."""
    emb = wd.load_embeddings(ctx.dir("embeddings"))
    c = ctx.config
    d = ctx.dir("tokenizer")
    t = time.time()
    if c.tokenizer == "rqvae":
        _, history = train_rqvae(c.rqvae, emb, ctx.checkpoints("tokenizer"), ctx.mesh,
                                 log=_rqvae_logger(ctx.tb_writer("tokenizer")), progress=ctx.progress)
        wd.write_json(os.path.join(d, wd.HISTORY), history)
        last = history[-1] if history else {}
        return {"tokenizer": "rqvae", "seconds": time.time() - t, **{k: last.get(k) for k in (
            "step", "loss", "recon", "used_codes", "perplexity", "collapsed_levels")}}
    if c.tokenizer == "rqkmeans":
        k = c.rqkmeans
        mean, std = input_norm(emb)
        x = ((emb - mean) / std).astype(np.float32)
        books = np.asarray(rq_kmeans(jax.random.key(c.seed), x, k.levels, k.codebook_size, k.iters))
        np.save(os.path.join(d, wd.CODEBOOKS), books)
        np.savez(os.path.join(d, wd.INPUT_NORM), mean=mean, std=std)
        return {"tokenizer": "rqkmeans", "seconds": time.time() - t}
    raise ConfigError(f"tokenizer='{c.tokenizer}' is not 'rqvae' or 'rqkmeans'")


def load_encoder(ctx, emb: np.ndarray) -> Encoder:
    """The encoder of the tokenizer stage's model (trained on embeddings `emb`)."""
    c = ctx.config
    if c.tokenizer == "rqvae":
        model = load_rqvae(c.rqvae, emb.shape[1], ctx.checkpoints("tokenizer"))
        books = model.codebooks[...]
        return Encoder(jax.jit(model.codes), c.rqvae.codebook_size, lambda x: (books, jax.jit(model.encode)(x)))
    d = ctx.dir("tokenizer")
    books = np.load(os.path.join(d, wd.CODEBOOKS))
    norm = os.path.join(d, wd.INPUT_NORM)
    if os.path.exists(norm):
        with np.load(norm) as z:
            mean, std = z["mean"], z["std"]
    else:  # a tokenizer folder written before the normalisation was saved with it
        mean, std = input_norm(emb)
    return Encoder(jax.jit(lambda x: residual_encode(books, (x - mean) / std)[0]), c.rqkmeans.codebook_size,
                   lambda x: (books, (x - mean) / std))
