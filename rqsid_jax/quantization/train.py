"""RQ-VAE training: optax, data-parallel over a mesh, k-means init, dead-code revival,
collapse detection, orbax checkpoints with exact resume, non-finite guard."""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from rqsid_jax import checkpointing, sharding
from rqsid_jax.errors import ConfigError, TrainingError
from rqsid_jax.quantization.kernels import ema_update, level_usage, perplexity, residual_encode, revive_dead_codes
from rqsid_jax.quantization.kmeans import rq_kmeans
from rqsid_jax.quantization.rqvae import RQVAE, Stat


def default_config() -> ml_collections.ConfigDict:
    """TIGER's RQ-VAE with the training recipe that does not collapse (AdamW + k-means + revival)."""
    c = ml_collections.ConfigDict()
    c.hidden_dims = (512, 256, 128)
    c.latent_dim = 32
    c.levels = 3
    c.codebook_size = 256
    c.beta = 0.25  # commitment weight
    c.optimizer = "adamw"  # or 'adagrad' (TIGER: lr 0.4; reported to collapse)
    c.learning_rate = 1e-3
    c.weight_decay = 1e-4
    c.batch_size = 1024
    c.num_steps = 3000
    c.kmeans_init = True
    c.kmeans_iters = 25
    c.revive_every = 100  # steps; 0 disables dead-code revival
    c.min_usage = 10  # codes used by fewer items than this (on the revival sample) are re-seeded
    c.revive_sample = 65536  # items used to count usage and pick new centers
    c.collapse_fraction = 0.1  # a level using < 10% of its codes is reported as collapsed
    c.ema = False  # EMA codebook updates instead of the codebook loss
    c.ema_decay = 0.99
    c.log_every = 100
    c.checkpoint_every = 1000
    c.seed = 0
    return c


def validate(cfg, num_items: int, input_dim: int) -> None:
    """ConfigError for RQ-VAE settings that cannot work with this data."""
    if cfg.levels < 1:
        raise ConfigError(f"rqvae.levels={cfg.levels}: need at least one level")
    if cfg.codebook_size < 2:
        raise ConfigError(f"rqvae.codebook_size={cfg.codebook_size}: need at least 2 codes")
    if cfg.codebook_size > num_items:
        raise ConfigError(f"rqvae.codebook_size={cfg.codebook_size} exceeds the {num_items} items: "
                          "most codes could never be used")
    if not 1 <= cfg.latent_dim <= input_dim:
        raise ConfigError(f"rqvae.latent_dim={cfg.latent_dim} must be in [1, input dim {input_dim}]")
    if cfg.batch_size < 1:
        raise ConfigError(f"rqvae.batch_size={cfg.batch_size} must be positive")


def make_optimizer(cfg) -> optax.GradientTransformation:
    """The configured optax optimizer (adamw, adam or adagrad)."""
    if cfg.optimizer == "adamw":
        return optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adagrad":
        return optax.adagrad(cfg.learning_rate)
    if cfg.optimizer == "adam":
        return optax.adam(cfg.learning_rate)
    raise ConfigError(f"rqvae.optimizer='{cfg.optimizer}' is not one of adamw, adam, adagrad")


@dataclasses.dataclass
class Trainer:
    """Holds the compiled steps for one (config, input dim, mesh)."""

    cfg: ml_collections.ConfigDict
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    mesh: jax.sharding.Mesh

    def loss_and_metrics(self, params, stats, x):
        """Reconstruction + codebook + commitment loss and per-item finiteness."""
        model = nnx.merge(self.graphdef, params, stats)
        x_hat, xn, codes, cb_loss, commit = model(x)
        per_item = jnp.mean((x_hat - xn) ** 2, axis=-1)
        recon = jnp.mean(per_item)
        loss = recon + self.cfg.beta * commit + (0.0 if self.cfg.ema else cb_loss)
        return loss, {"loss": loss, "recon": recon, "codebook": cb_loss, "commitment": commit,
                      "finite_items": jnp.isfinite(per_item)}

    def train_step(self, state, x, ok):
        """One optimizer step (and EMA codebook update where configured). `ok`: whether every
        earlier step since the host last looked was finite; after a non-finite step every later
        one changes nothing, so the host can check once per log/checkpoint interval and still
        stop with the state before the first bad step."""
        params, stats = state["params"], state["stats"]
        grads, metrics = jax.grad(self.loss_and_metrics, has_aux=True)(params, stats, x)
        updates, opt_state = self.tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        new_state = dict(state, params=new_params, opt_state=opt_state, step=state["step"] + 1)
        if self.cfg.ema:
            model = nnx.merge(self.graphdef, params, stats)
            z = model.encode(x)
            codes, residuals, _ = residual_encode(params["codebooks"][...], z)
            books, size, sums = ema_update(params["codebooks"][...], state["ema_size"], state["ema_sum"],
                                           residuals, codes, self.cfg.ema_decay)
            new_params["codebooks"] = nnx.Param(books)
            new_state.update(ema_size=size, ema_sum=sums)
        finite = ok & jnp.isfinite(metrics["loss"]) & jnp.all(jnp.stack(
            [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        # A non-finite step changes nothing: the caller stops with the state before it.
        new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
        metrics["finite"] = finite
        return new_state, metrics

    def revive(self, state, x, key):
        """Re-initialises dead codes from encoder outputs of a sample."""
        model = nnx.merge(self.graphdef, state["params"], state["stats"])
        z = model.encode(x)
        books, revived = revive_dead_codes(state["params"]["codebooks"][...], z, self.cfg.min_usage, key)
        params = jax.tree.map(lambda v: v, state["params"])  # a new State, same structure
        params["codebooks"] = nnx.Param(books)
        return dict(state, params=params), revived


def init_state(cfg, x: np.ndarray, mesh, key) -> tuple[nnx.GraphDef, dict]:
    """Fresh model + optimizer state, input statistics from all items, k-means codebooks."""
    n, d = x.shape
    model = RQVAE(d, tuple(cfg.hidden_dims), cfg.latent_dim, cfg.levels, cfg.codebook_size,
                  rngs=nnx.Rngs(params=jax.random.fold_in(key, 0)))
    # float64 statistics on the host: the same numbers however the data is sharded. Non-finite
    # rows are left out here; training stops with their ids when a batch reaches them.
    ok = np.isfinite(x).all(axis=1)
    mean = x[ok].mean(axis=0, dtype=np.float64)
    std = x[ok].std(axis=0, dtype=np.float64)
    model.mean[...] = jnp.asarray(mean, jnp.float32)
    model.std[...] = jnp.asarray(np.maximum(std, 1e-6), jnp.float32)
    if cfg.kmeans_init:
        # k-means on the latents of the first batch (at least codebook_size points).
        m = max(min(cfg.batch_size, n), cfg.codebook_size)
        first = x[epoch_permutation(cfg.seed, 0, n)[:m]]
        first = first[np.isfinite(first).all(axis=1)]
        z = model.encode(jnp.asarray(first))
        model.codebooks[...] = rq_kmeans(jax.random.fold_in(key, 1), z, cfg.levels, cfg.codebook_size,
                                         cfg.kmeans_iters)
    graphdef, state = train_state(cfg, model)
    return graphdef, sharding.replicate(state, mesh)


def train_state(cfg, model: RQVAE) -> tuple[nnx.GraphDef, dict]:
    """The training state's one schema (what checkpoints hold): parameters, statistics,
    optimizer state, step, and with EMA codebooks their running counts and sums."""
    graphdef, params, stats = nnx.split(model, nnx.Param, Stat)
    state = {"params": params, "stats": stats, "opt_state": make_optimizer(cfg).init(params), "step": jnp.int32(0)}
    if cfg.ema:
        # EMA statistics start as one pseudo-count at each (k-means) code.
        state["ema_size"] = jnp.ones((cfg.levels, cfg.codebook_size))
        state["ema_sum"] = jnp.array(params["codebooks"][...])
    return graphdef, state


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """Item order of an epoch, a function of (seed, epoch) only: resume reproduces it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def model_from_state(graphdef, state) -> RQVAE:
    """The RQVAE module holding a training state's parameters and statistics."""
    return nnx.merge(graphdef, state["params"], state["stats"])


def usage_report(codes: np.ndarray, codebook_size: int) -> dict:
    """Per-level used codes, usage fraction and perplexity of `codes`."""
    counts = np.asarray(level_usage(jnp.asarray(codes), codebook_size))
    return {"used_codes": (counts > 0).sum(1).tolist(),
            "usage_fraction": ((counts > 0).sum(1) / codebook_size).round(4).tolist(),
            "perplexity": np.asarray(perplexity(jnp.asarray(counts)), np.float64).round(2).tolist()}


def train_rqvae(cfg, x: np.ndarray, ckpt_dir: Optional[str] = None, mesh=None,
                stop_after: Optional[int] = None, log: Callable[[dict], None] = None,
                progress: bool = True):
    """Trains on item embeddings x [N, D]; resumes from the latest checkpoint in ckpt_dir.

    `stop_after` ends the run after that many total steps (used to test interrupt + resume).
    Returns (model, history of logged metric dicts).
    """
    x = np.asarray(x, np.float32)
    n, d = x.shape
    validate(cfg, n, d)
    mesh = mesh or sharding.data_mesh()
    ndev = mesh.size
    batch = min(cfg.batch_size, n) // ndev * ndev
    if batch == 0:
        raise ConfigError(f"rqvae.batch_size={cfg.batch_size} is smaller than the {ndev} devices")
    steps_per_epoch = n // batch
    key = jax.random.key(cfg.seed)
    graphdef, state = init_state(cfg, x, mesh, key)
    trainer = Trainer(cfg, graphdef, make_optimizer(cfg), mesh)
    step_fn = jax.jit(trainer.train_step, donate_argnums=0)
    revive_fn = jax.jit(trainer.revive)
    mngr = checkpointing.manager(ckpt_dir) if ckpt_dir else None
    start = 0
    if mngr is not None:
        state, restored = checkpointing.restore(mngr, state)
        if restored is not None:
            start = int(restored)
            logging.info("rqvae: resumed from step %d", start)
    end = cfg.num_steps if stop_after is None else min(stop_after, cfg.num_steps)
    sample_idx = np.random.default_rng([cfg.seed, 7]).permutation(n)[: cfg.revive_sample]
    sample = sharding.shard_batch(sharding.pad_to_multiple(x[sample_idx], ndev)[0], mesh)
    history = []
    bar = tqdm(range(start, end), desc="rqvae", disable=not progress, initial=start, total=end)
    ok = jnp.bool_(True)
    pending = []  # (step, batch rows, finite flag, per-item finiteness) since the host last looked
    perm_epoch, perm = -1, None

    def check():
        # The host waits here once an interval, not once a step (the steps have finished by now).
        for s, rows, good, items in pending:
            if not bool(good):
                _stop(f"non-finite loss at step {s + 1}", rows[~sharding.to_host(items)], mngr)
        pending.clear()

    for step in bar:
        epoch, i = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:  # O(N) once an epoch, not once a step
            perm_epoch, perm = epoch, epoch_permutation(cfg.seed, epoch, n)
        idx = perm[i * batch:(i + 1) * batch]
        xb = x[idx]
        bad_rows = ~np.isfinite(xb).all(axis=1)
        if bad_rows.any():
            check()
            _stop(f"non-finite input at step {step + 1}", idx[bad_rows], mngr)
        state, metrics = step_fn(state, sharding.shard_batch(xb, mesh), ok)
        ok = metrics["finite"]
        pending.append((step, idx, ok, metrics["finite_items"]))
        done = step + 1
        revive = cfg.revive_every and done % cfg.revive_every == 0
        logs = done % cfg.log_every == 0 or done == end
        saves = mngr and (done % cfg.checkpoint_every == 0 or done == end)
        if revive or logs or saves:
            check()
        if revive:
            state, revived = revive_fn(state, sample, jax.random.fold_in(key, 1000 + done))
            if int(np.sum(revived)):
                logging.info("rqvae step %d: revived %s dead codes per level", done, np.asarray(revived).tolist())
        if logs:
            m = {k: float(v) for k, v in metrics.items() if k not in ("finite_items", "finite")}
            codes = sharding.to_host(_codes(graphdef, state, sample))[: len(sample_idx)]
            m.update(usage_report(codes, cfg.codebook_size), step=done)
            collapsed = [l for l, u in enumerate(m["usage_fraction"]) if u < cfg.collapse_fraction]
            if collapsed:
                logging.warning("rqvae step %d: collapse at levels %s (usage %s)", done, collapsed,
                                m["usage_fraction"])
            m["collapsed_levels"] = collapsed
            history.append(m)
            if log:
                log(m)
            bar.set_postfix(loss=f"{m['loss']:.4f}", used=m["used_codes"])
        if saves:
            checkpointing.save(mngr, done, state)
    return model_from_state(graphdef, state), history


def _stop(what: str, items: np.ndarray, mngr) -> None:
    last = mngr.latest_step() if mngr is not None else None
    raise TrainingError(
        f"rqvae: {what}; offending items {items[:10].tolist()}{' ...' if items.size > 10 else ''}; "
        + (f"last good checkpoint kept at step {last}" if last is not None else "no checkpoint written yet"))


@jax.jit
def _codes(graphdef, state, x):
    return model_from_state(graphdef, state).codes(x)


def load_rqvae(cfg, input_dim: int, ckpt_dir: str) -> RQVAE:
    """Rebuilds the model and restores the latest checkpoint's parameters and statistics."""
    model = RQVAE(input_dim, tuple(cfg.hidden_dims), cfg.latent_dim, cfg.levels, cfg.codebook_size,
                  rngs=nnx.Rngs(0))
    graphdef, target = train_state(cfg, model)
    if not os.path.isdir(ckpt_dir):
        raise ConfigError(f"{ckpt_dir}: no RQ-VAE checkpoint directory")
    state, step = checkpointing.restore(checkpointing.manager(ckpt_dir), target)
    if step is None:
        raise ConfigError(f"{ckpt_dir}: no RQ-VAE checkpoint found")
    return model_from_state(graphdef, state)
