"""Retriever training: grain batches by length, optax warm-up + inverse-sqrt, data-parallel,
periodic validation with best-checkpoint selection and early stopping, orbax resume."""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from rqsid_jax import checkpointing, selection, sharding
from rqsid_jax.data.dataset import Split
from rqsid_jax.errors import ConfigError, TrainingError
from rqsid_jax.retrieval import evaluate, precision
from rqsid_jax.retrieval.input_pipeline import (BUCKET_ITEMS, Collator, default_buckets, eval_examples, sample_rows,
                                      train_examples)
from rqsid_jax.retrieval.model import ModelConfig, Seq2Seq
from rqsid_jax.retrieval.sid_vocab import BOS, PAD, PrefixIndex, SidVocab, item_tokens


def default_config() -> ml_collections.ConfigDict:
    """TIGER-size retriever and its training, validation and checkpoint settings."""
    c = ml_collections.ConfigDict()
    # TIGER's size.
    c.d_model = 128
    c.num_heads = 6
    c.head_dim = 64
    c.mlp_dim = 1024
    c.encoder_layers = 4
    c.decoder_layers = 4
    c.dropout = 0.1
    # Matmul precision (precision.py): auto = bfloat16 (float32 accumulation) where the hardware
    # multiplies bfloat16 natively (TPU, GPU, AVX512-BF16/AMX CPUs), else float32.
    c.dtype = "auto"
    # Encoder positions: "tokens" (one per SID token, TIGER) or "items" (one per history item).
    c.encoder_input = "tokens"
    c.num_user_tokens = 2000  # hashed user buckets; 1 = no user token information
    c.max_history = 20
    c.augment = "prefixes"  # prefixes (TIGER) | subsequences (every contiguous window, GRID)
    # Encoder length buckets, in history items (one jit shape each; see data.default_buckets).
    c.bucket_items = BUCKET_ITEMS
    # Training.
    c.batch_size = 256
    c.learning_rate = 1e-3
    c.warmup_steps = 1000
    # "inverse_sqrt" (TIGER: never reaches 0, suits open-ended training) or "cosine" (decays to
    # final_lr_fraction x peak at num_steps: anneals within a fixed budget).
    c.lr_schedule = "inverse_sqrt"
    c.final_lr_fraction = 0.0
    c.label_smoothing = 0.0  # cross-entropy only
    c.weight_decay = 0.01
    c.num_steps = 20000
    c.loss = "ce"  # ce | focal | mile
    c.gamma = 2.0  # focal / MiLe exponent
    c.seed = 0
    c.checkpoint_every = 1000
    c.eval_every = 1000
    c.eval_users = 4000  # validation users used for model selection (0 = all)
    c.eval_beam = 20
    c.patience = 5  # evaluations without improvement before stopping (0 = never)
    c.log_every = 100
    c.data_threads = 2
    return c


def schedule(cfg) -> optax.Schedule:
    """Linear warm-up, then inverse square-root decay (TIGER) or a cosine to the budget's end."""
    w = max(cfg.warmup_steps, 1)
    if cfg.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, w, max(cfg.num_steps, w + 1),
                                                  cfg.learning_rate * cfg.final_lr_fraction)
    if cfg.lr_schedule != "inverse_sqrt":
        raise ConfigError(f"retriever.lr_schedule='{cfg.lr_schedule}' is not inverse_sqrt or cosine")

    def lr(step):
        step = jnp.maximum(step, 1)
        return cfg.learning_rate * jnp.minimum(step / w, jnp.sqrt(w / step))

    return lr


def decay_mask(params):
    """AdamW decays the matmul kernels only: embeddings, learned positions, LayerNorm and biases
    are left alone (decaying LayerNorm scales toward 0 or rare tokens' embeddings only hurts)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(getattr(k, "key", None) == "kernel" for k in path), params)


def optimizer(cfg) -> optax.GradientTransformation:
    """AdamW on the schedule, decaying matmul kernels only."""
    return optax.adamw(schedule(cfg), weight_decay=cfg.weight_decay, mask=decay_mask)


def token_loss(logits, target, kind: str, gamma: float, smoothing: float = 0.0):
    """Per-token loss [B, T]: cross-entropy (optionally label-smoothed over the output
    vocabulary), focal (1-p)^g * CE, or MiLe H(p)^g * CE.

    MiLe scales each token's cross-entropy by the entropy of the predicted distribution raised
    to gamma (Su et al., NAACL 2024 Findings), treated as a weight (no gradient through H).
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    lp = jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    if kind == "ce":
        if smoothing:
            return -(1.0 - smoothing) * lp - smoothing * jnp.mean(logp, axis=-1)
        return -lp
    if kind == "focal":
        return -((1.0 - jnp.exp(lp)) ** gamma) * lp
    if kind == "mile":
        ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
        return -jax.lax.stop_gradient(ent ** gamma) * lp
    raise ConfigError(f"retriever.loss='{kind}' is not ce, focal or mile")


@dataclasses.dataclass
class RetrieverBundle:
    """Everything needed to decode: model structure, SID vocabulary and prefix index."""

    graphdef: nnx.GraphDef
    vocab: SidVocab
    item_tok: np.ndarray
    index: PrefixIndex
    buckets: list[int]
    encoder_input: str = "tokens"

    def collator(self, examples, batch_size: int) -> Collator:
        """Batches of this model's encoder input: item input keeps each item's fixed-width token
        slot (no compaction of variable-length SIDs), so the model can sum it per item."""
        return Collator(examples, self.item_tok, self.buckets, batch_size,
                        compact=self.encoder_input == "tokens")


def build_retriever(cfg, sids: np.ndarray, seed: int = 0):
    """The retriever bundle (structure, vocabulary, prefix index, buckets) and fresh float32
    parameters for the SID table `sids`, in the precision cfg.dtype resolves to here."""
    if cfg.encoder_input not in ("tokens", "items"):
        raise ConfigError(f"retriever.encoder_input='{cfg.encoder_input}' is not tokens or items")
    try:
        dtype = precision.resolve(cfg.dtype)
    except ValueError as e:
        raise ConfigError(f"retriever.{e}") from None
    vocab = SidVocab.from_sids(sids, cfg.num_user_tokens)
    item_tok = item_tokens(sids, vocab)
    index = PrefixIndex.build(item_tok)
    buckets = default_buckets(vocab, cfg.max_history, cfg.bucket_items)
    width = vocab.max_sid_tokens
    enc_len = buckets[-1] if cfg.encoder_input == "tokens" else 1 + (buckets[-1] - 1) // width
    mc = ModelConfig(vocab.size, cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.mlp_dim, cfg.encoder_layers,
                     cfg.decoder_layers, cfg.dropout, enc_len, width + 1, vocab.user_offset,
                     dtype, cfg.encoder_input, width)
    model = Seq2Seq(mc, nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    return RetrieverBundle(graphdef, vocab, item_tok, index, buckets, cfg.encoder_input), params


def make_train_step(r: RetrieverBundle, cfg, tx):
    """A pure training step (state, batch, key) -> (state, loss); a non-finite loss keeps the state."""
    def loss_fn(params, batch, key):
        model = nnx.merge(r.graphdef, params)
        tgt = batch["target"]
        dec_in = jnp.concatenate([jnp.full((tgt.shape[0], 1), BOS, tgt.dtype), tgt[:, :-1]], axis=1)
        logits = model(batch["encoder"], dec_in, key)
        tl = token_loss(logits, tgt, cfg.loss, cfg.gamma, cfg.label_smoothing)
        w = (tgt != PAD) * batch["weight"][:, None]
        return jnp.sum(tl * w) / jnp.maximum(jnp.sum(w), 1.0)

    def step(state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, key)
        updates, opt = tx.update(grads, state["opt_state"], state["params"])
        new = dict(state, params=optax.apply_updates(state["params"], updates), opt_state=opt,
                   step=state["step"] + 1)
        ok = jnp.isfinite(loss)
        new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
        return new, loss

    return step


def make_eval_loss(r: RetrieverBundle, cfg):
    """Summed token cross-entropy and token count of a batch (bench/precision_parity.py)."""
    def f(params, batch):
        model = nnx.merge(r.graphdef, params)
        tgt = batch["target"]
        dec_in = jnp.concatenate([jnp.full((tgt.shape[0], 1), BOS, tgt.dtype), tgt[:, :-1]], axis=1)
        tl = token_loss(model(batch["encoder"], dec_in), tgt, "ce", 0.0)
        w = (tgt != PAD) * batch["weight"][:, None]
        return jnp.sum(tl * w), jnp.sum(w)

    return f


def train_retriever(cfg, sids: np.ndarray, split: Split, ckpt_dir: Optional[str] = None, mesh=None,
                    log: Optional[Callable[[dict], None]] = None, progress: bool = True,
                    stop_after: Optional[int] = None):
    """Trains on sliding windows of the training parts. Returns (RetrieverBundle, best params, history)."""
    mesh = mesh or sharding.data_mesh()
    if cfg.batch_size % mesh.size:
        raise ConfigError(f"retriever.batch_size={cfg.batch_size} is not a multiple of the {mesh.size} devices")
    r, params = build_retriever(cfg, sids, cfg.seed)
    tx = optimizer(cfg)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0),
             "best": jnp.float32(-1.0), "bad_evals": jnp.int32(0)}
    state = sharding.replicate(state, mesh)
    train = r.collator(train_examples(split, r.vocab, cfg.max_history, cfg.augment), cfg.batch_size)
    steps_per_epoch = len(train.plan(cfg.seed, 0))
    val = eval_examples(split, r.vocab, "validation", cfg.max_history)
    if cfg.eval_users and cfg.eval_users < len(val):
        val = val.subset(sample_rows(len(val), cfg.eval_users, [cfg.seed, 99]))
    mngr = checkpointing.manager(os.path.join(ckpt_dir, "last")) if ckpt_dir else None
    best_mngr = checkpointing.manager(os.path.join(ckpt_dir, "best"), max_to_keep=1) if ckpt_dir else None
    start = 0
    if mngr is not None:
        state, restored = checkpointing.restore(mngr, state)
        start = int(restored or 0)
        if start:
            logging.info("retriever: resumed from step %d", start)
    best_params = state["params"]
    if best_mngr is not None and best_mngr.latest_step() is not None:
        best_params, _ = checkpointing.restore(best_mngr, state["params"])
    step_fn = jax.jit(make_train_step(r, cfg, tx), donate_argnums=0)
    key = jax.random.key(cfg.seed)
    end = cfg.num_steps if stop_after is None else min(stop_after, cfg.num_steps)
    history, t0, seen = [], time.time(), 0
    losses = []
    bar = tqdm(total=end, initial=start, desc="retriever", disable=not progress)
    step = start
    stopped_early = False
    while step < end and not stopped_early:
        epoch, offset = divmod(step, steps_per_epoch)
        plan = train.plan(cfg.seed, epoch)
        for batch in train.dataset(plan, offset, cfg.data_threads):
            if step >= end:
                break
            b = sharding.shard_batch({k: batch[k] for k in ("encoder", "target", "weight")}, mesh)
            state, loss = step_fn(state, b, jax.random.fold_in(key, step))
            losses.append(loss)
            seen += int(batch["weight"].sum())
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0:
                vals = np.asarray(jax.device_get(losses))
                losses = []
                if not np.isfinite(vals).all():
                    raise TrainingError(f"retriever: non-finite loss before step {step}; "
                                        f"last good checkpoint kept at step {mngr.latest_step() if mngr else None}")
                bar.set_postfix(loss=f"{vals.mean():.3f}")
                if log:
                    log({"step": step, "train_loss": float(vals.mean()),
                         "samples_per_s": seen / (time.time() - t0)})
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == end):
                k_sel = min(10, cfg.eval_beam)  # model selection on validation NDCG@10
                m = evaluate.evaluate(r, state["params"], val, beam=cfg.eval_beam, ks=sorted({min(5, k_sel), k_sel}),
                                      batch_size=256, progress=False)
                improved, best, bad = selection.update(m["metrics"][f"ndcg@{k_sel}"], state["best"], state["bad_evals"])
                # placed like the rest of the state: across hosts orbax saves only global arrays
                state["best"], state["bad_evals"] = sharding.replicate((best, bad), mesh)
                best_params = selection.keep_if_improved(improved, state["params"], best_params, best_mngr, step)
                rec = selection.record(step, step / steps_per_epoch, time.time() - t0, m["metrics"], improved)
                history.append(rec)
                if log:
                    log(rec)
                if cfg.patience and int(state["bad_evals"]) >= cfg.patience:
                    logging.info("retriever: early stop at step %d (no val NDCG@10 gain in %d evals)",
                                 step, cfg.patience)
                    stopped_early = True
            if mngr and (step % cfg.checkpoint_every == 0 or step == end or stopped_early):
                checkpointing.save(mngr, step, state)
            if stopped_early:
                break
    bar.close()
    if not cfg.eval_every:  # no model selection: the last parameters are the result (and "best")
        best_params = state["params"]
        if best_mngr is not None and step and best_mngr.latest_step() != step:
            checkpointing.save(best_mngr, step, best_params)
    return r, best_params, history
