"""RQ-VAE (TIGER): MLP encoder -> residual quantizer (L x M codes) -> MLP decoder, in Flax NNX."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rqsid_jax.quantization.kernels import residual_encode, rq_losses, straight_through


class Stat(nnx.Variable):
    """Non-trainable statistics (input mean/std) that belong to the checkpoint."""


class MLP(nnx.Module):
    """ReLU MLP between the given widths (no activation after the last layer)."""
    def __init__(self, dims: Sequence[int], rngs: nnx.Rngs):
        self.layers = nnx.List([
            nnx.Linear(a, b, rngs=rngs, kernel_init=nnx.initializers.he_uniform())
            for a, b in zip(dims[:-1], dims[1:])])

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


class RQVAE(nnx.Module):
    """Reconstructs standardised inputs; codebooks [L, M, latent_dim] are parameters."""

    def __init__(self, input_dim: int, hidden_dims: Sequence[int] = (512, 256, 128), latent_dim: int = 32,
                 levels: int = 3, codebook_size: int = 256, *, rngs: nnx.Rngs):
        self.encoder = MLP([input_dim, *hidden_dims, latent_dim], rngs)
        self.decoder = MLP([latent_dim, *reversed(hidden_dims), input_dim], rngs)
        self.codebooks = nnx.Param(0.01 * jax.random.normal(rngs.params(), (levels, codebook_size, latent_dim)))
        self.mean = Stat(jnp.zeros((input_dim,)))
        self.std = Stat(jnp.ones((input_dim,)))

    def normalize(self, x):
        """Input standardised with the statistics saved in the model."""
        return (x - self.mean[...]) / self.std[...]

    def encode(self, x):
        """Latents z [N, latent_dim] of raw inputs."""
        return self.encoder(self.normalize(x))

    def codes(self, x):
        """Semantic codes [N, L] of raw inputs (inference path, no losses)."""
        return residual_encode(self.codebooks[...], self.encode(x))[0]

    def __call__(self, x):
        """Returns (x_hat in normalised space, normalised x, codes, codebook_loss, commitment_loss)."""
        xn = self.normalize(x)
        z = self.encoder(xn)
        q, codes, cb_loss, commit = rq_losses(self.codebooks[...], z)
        x_hat = self.decoder(straight_through(z, q))
        return x_hat, xn, codes, cb_loss, commit
