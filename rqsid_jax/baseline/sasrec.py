"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over item ids, the sequential
recommender generative retrieval is compared against, on the same split and metrics.

Every position of a user's training part predicts its next item. Loss: cross-entropy over the
whole catalogue with the item embeddings as the output layer (the stronger recipe, e.g.
cornac's tuned SASRec), a sampled softmax over uniform negatives shared by a batch (~3x cheaper
an epoch here), or the paper's binary cross-entropy with one sampled negative per position.
Evaluation scores the whole catalogue (no sampled negatives) and keeps the top K.
The blocks are the retriever's pre-LayerNorm encoder layers (same precision handling and
dropout with explicit keys, so a step is a pure function of (params, batch, step key)).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Optional

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from rqsid_jax import checkpointing, selection, sharding
from rqsid_jax.data.dataset import MAX_HISTORY, Split
from rqsid_jax.errors import ConfigError, TrainingError
from rqsid_jax.retrieval import precision
from rqsid_jax.retrieval.metrics import recall_ndcg
from rqsid_jax.retrieval.model import EncoderLayer, ModelConfig, dropout
from rqsid_jax.retrieval.precision import einsum

LOSSES = ("ce", "sampled_ce", "bce")


def default_config() -> ml_collections.ConfigDict:
    """SASRec's recipe on Beauty (README, "SASRec baseline"): full-catalogue cross-entropy,
    Adam at a constant 2e-3, 16 epochs (under 10 minutes on a 2-core CPU)."""
    c = ml_collections.ConfigDict()
    c.d_model = 64
    c.num_heads = 2
    c.head_dim = 32
    c.mlp_dim = 256
    c.layers = 2
    c.dropout = 0.3
    c.max_len = MAX_HISTORY  # the split's histories hold at most this many items
    c.dtype = "auto"
    # ce: full-catalogue softmax | sampled_ce: shared uniform negatives | bce: one sampled negative
    # per position (the paper)
    c.loss = "ce"
    c.negatives = 2048  # loss=sampled_ce: uniform negatives shared by a batch
    c.batch_size = 128
    # 1e-3: validation R@10 0.045 after 4 epochs vs 0.057 at 2e-3. Cosine decay at 4e-3 gained
    # +0.0027 validation R@10 (under 2 SE) and lost 0.0013 on test, 10.5 min: kept constant (README)
    c.learning_rate = 2e-3
    c.weight_decay = 0.0
    c.lr_schedule = "constant"  # constant | cosine (warmup, then cosine decay to 0 at the last epoch)
    c.warmup_steps = 0
    c.num_epochs = 16
    c.eval_every_epochs = 2
    c.patience = 3  # evaluations without a validation NDCG@10 gain before stopping (0 = never)
    # input lengths, one jit shape each: Beauty's windows pad 1.14x (1.28x with 4/8/12/20)
    c.bucket_lengths = (3, 5, 7, 10, 14, MAX_HISTORY)
    c.seed = 0
    c.log_every = 50
    return c


class SASRec(nnx.Module):
    """Item embeddings (row 0 = padding) + learned positions -> causal blocks -> LayerNorm."""

    def __init__(self, num_items: int, cfg, rngs: nnx.Rngs):
        self.num_items, self.max_len = num_items, cfg.max_len
        self.mc = ModelConfig(num_items + 1, cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.mlp_dim, cfg.layers, 0,
                              cfg.dropout, cfg.max_len, 1, dtype=precision.resolve(cfg.dtype))
        init = nnx.initializers.normal(0.02)
        self.item = nnx.Embed(num_items + 1, cfg.d_model, embedding_init=init, rngs=rngs)
        self.pos = nnx.Param(init(rngs.params(), (cfg.max_len, cfg.d_model)))
        self.blocks = nnx.List([EncoderLayer(self.mc, rngs) for _ in range(cfg.layers)])
        self.ln = nnx.LayerNorm(cfg.d_model, rngs=rngs)

    def __call__(self, seq, key=None):
        """seq [B, L] item index + 1, left-padded with 0 (newest last) -> hidden [B, L, d].
        The newest position always has the last learned position, whatever L is, and pads are
        masked as keys, so a sequence's states do not depend on its padding."""
        length = seq.shape[1]
        x = self.item(seq) + self.pos[self.max_len - length:]
        keys = jax.random.split(key, len(self.blocks) + 1) if key is not None else [None] * (len(self.blocks) + 1)
        x = dropout(x, self.mc.dropout, keys[-1])
        causal = jnp.tril(jnp.ones((length, length), bool))
        # keys: real items before or at the query, and the query itself (a pad then sees only
        # itself, never a later item)
        mask = causal[None, None] & ((seq != 0)[:, None, None, :] | jnp.eye(length, dtype=bool)[None, None])
        for block, k in zip(self.blocks, keys):
            x = block(x, mask, k)
        return self.ln(x)

    def scores(self, h):
        """h [..., d] -> scores over the catalogue [..., num_items] (the item embeddings, tied)."""
        flat = h.reshape(-1, h.shape[-1])  # one 2-D product: XLA's CPU dot is fastest on it
        return einsum("md,nd->mn", flat, self.item.embedding[1:], self.mc.dtype).reshape(*h.shape[:-1], -1)


# ------------------------------------------------------------------ data

def training_windows(split: Split, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) [N, max_len], item index + 1, left-padded with 0: each training part cut
    into windows of at most max_len + 1 items from its end, so every item after the first is a
    target exactly once, predicted from the (at most max_len) items before it in its window."""
    ins, outs = [], []
    for s in split.train:
        end = len(s)
        while end >= 2:
            start = max(0, end - max_len - 1)
            w = np.asarray(s[start:end]) + 1
            row_in, row_out = np.zeros(max_len, np.int32), np.zeros(max_len, np.int32)
            row_in[max_len - len(w) + 1:], row_out[max_len - len(w) + 1:] = w[:-1], w[1:]
            ins.append(row_in); outs.append(row_out)
            end = start + 1
    return np.array(ins, np.int32).reshape(-1, max_len), np.array(outs, np.int32).reshape(-1, max_len)


def left_padded(histories, max_len: int) -> np.ndarray:
    """Histories (item indices, oldest first) -> [U, max_len] item index + 1, left-padded."""
    out = np.zeros((len(histories), max_len), np.int32)
    for i, h in enumerate(histories):
        h = np.asarray(h)[-max_len:]
        if h.size:
            out[i, max_len - h.size:] = h + 1
    return out


class Batches:
    """Length-bucketed batches of training windows, in an order that is a function of (seed,
    epoch) alone (a resumed run sees the batches it would have seen)."""

    def __init__(self, inputs: np.ndarray, targets: np.ndarray, lengths, batch_size: int):
        self.inputs, self.targets, self.batch_size = inputs, targets, batch_size
        self.lengths = sorted(set(int(x) for x in lengths) | {inputs.shape[1]})
        n = (inputs != 0).sum(1)
        self.bucket_of = np.searchsorted(np.asarray(self.lengths), n)

    def plan(self, seed: int, epoch: int) -> list[np.ndarray]:
        """Batches of window indices for one epoch (each within one bucket, -1 padded)."""
        rng = np.random.default_rng([seed, epoch])
        batches = []
        for b in range(len(self.lengths)):
            idx = rng.permutation(np.flatnonzero(self.bucket_of == b))
            for s in range(0, idx.size, self.batch_size):
                chunk = idx[s:s + self.batch_size]
                batches.append(np.concatenate([chunk, np.full(self.batch_size - chunk.size, -1)]))
        return [batches[i] for i in rng.permutation(len(batches))]

    def __call__(self, idx: np.ndarray) -> dict:
        real = idx >= 0
        i = np.where(real, idx, 0)
        length = self.lengths[int(self.bucket_of[i[real]].max())]
        cut = slice(self.inputs.shape[1] - length, None)  # left-padded: the newest items are last
        return {"inputs": np.where(real[:, None], self.inputs[i, cut], 0),
                "targets": np.where(real[:, None], self.targets[i, cut], 0)}

    def dataset(self, plan: list[np.ndarray], start: int = 0):
        """A grain pipeline over the plan's batches from `start`."""
        return grain.MapDataset.source(plan[start:]).map(self).to_iter_dataset(
            grain.ReadOptions(num_threads=1, prefetch_buffer_size=4))


# ------------------------------------------------------------------ training

def loss_fn(graphdef, params, batch, key, kind: str, num_items: int, negatives: int = 0):
    """Mean over real positions of the full-softmax CE, the sampled-softmax CE over `negatives`
    uniform items shared by the batch, or BCE with one uniform negative per position."""
    model = nnx.merge(graphdef, params)
    k_model, k_neg = jax.random.split(key)
    h = model(batch["inputs"], k_model)
    tgt = batch["targets"]
    w = (tgt != 0).astype(jnp.float32)
    emb = model.item.embedding[...]
    pos_s = jnp.sum(h * emb[tgt], -1)  # the target's score, gathered from the small table
    if kind == "ce":
        # logsumexp - target score: the catalogue-sized logits are only reduced (their gradient is
        # the softmax); picking the target out of them made XLA scatter into a [B, L, items]
        # gradient, ~6x slower per step (bench/sasrec_train.py)
        nll = jax.nn.logsumexp(model.scores(h).astype(jnp.float32), axis=-1) - pos_s
    elif kind == "sampled_ce":
        # the catalogue's logsumexp estimated from a uniform sample: each sampled score stands
        # for num_items / negatives items (the logQ correction); a sample that is the target
        # itself is dropped, the target's own score is always in. ~negatives / num_items of the
        # full CE's cost per position.
        neg = jax.random.randint(k_neg, (negatives,), 1, num_items + 1)
        neg_s = einsum("md,nd->mn", h.reshape(-1, h.shape[-1]), emb[neg], model.mc.dtype).astype(jnp.float32)
        neg_s = neg_s.reshape(*tgt.shape, negatives) + jnp.log(num_items / negatives)
        neg_s = jnp.where(neg == tgt[..., None], -jnp.inf, neg_s)
        nll = jax.nn.logsumexp(jnp.concatenate([pos_s[..., None], neg_s], -1), axis=-1) - pos_s
    elif kind == "bce":
        neg = jax.random.randint(k_neg, tgt.shape, 1, num_items + 1)
        neg_s = jnp.sum(h * emb[neg], -1)
        nll = -jax.nn.log_sigmoid(pos_s) - jax.nn.log_sigmoid(-neg_s)
    else:
        raise ConfigError(f"baseline.loss='{kind}' is not one of {LOSSES}")
    return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)


def schedule(cfg, total_steps: int) -> optax.ScalarOrSchedule:
    """The learning rate: constant, or linear warmup then cosine decay to 0 at total_steps (a
    fixed budget gains from ending at a small rate, as the retriever's recipe search found)."""
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate  # a float: the optimizer state of earlier checkpoints
    if cfg.lr_schedule == "cosine":
        w = max(cfg.warmup_steps, 1)
        return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, w, max(total_steps, w + 1))
    raise ConfigError(f"baseline.lr_schedule='{cfg.lr_schedule}' is not constant or cosine")


def build(cfg, num_items: int):
    """(graphdef, float32 params) of a fresh SASRec for a catalogue of num_items items."""
    try:
        precision.resolve(cfg.dtype)
    except ValueError as e:
        raise ConfigError(f"baseline.{e}") from None
    return nnx.split(SASRec(num_items, cfg, nnx.Rngs(cfg.seed)))


def top_k(graphdef, params, histories: np.ndarray, k: int, batch_size: int = 1024) -> np.ndarray:
    """Top-k item indices [U, k] over the whole catalogue for left-padded histories [U, L]
    (-1 past the catalogue's size, as the retriever's predictions)."""
    kk = min(k, nnx.merge(graphdef, params).num_items)

    @jax.jit
    def f(p, seq):
        model = nnx.merge(graphdef, p)
        top = jax.lax.top_k(model.scores(model(seq)[:, -1]).astype(jnp.float32), kk)[1]
        return jnp.pad(top, ((0, 0), (0, k - kk)), constant_values=-1)

    out = []
    for s in range(0, len(histories), batch_size):
        chunk = histories[s:s + batch_size]
        padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), chunk.shape[1]), np.int32)])
        out.append(np.asarray(f(params, jnp.asarray(padded)))[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def evaluate(graphdef, params, split: Split, which: str, max_len: int, k: int = 50) -> tuple[dict, np.ndarray]:
    """(Recall/NDCG@K over every user of the split, top-k predictions [U, k])."""
    hist = split.valid_history if which == "validation" else split.test_history
    tgt = split.valid_target if which == "validation" else split.test_target
    pred = top_k(graphdef, params, left_padded(hist, max_len), k)
    return recall_ndcg(pred, np.asarray(tgt)), pred


def train(cfg, split: Split, num_items: int, ckpt_dir: Optional[str] = None, mesh=None,
          log: Optional[Callable[[dict], None]] = None, stop_after: Optional[int] = None):
    """Trains with Adam(W) and early stopping on validation NDCG@10 (every user, every
    eval_every_epochs epochs). Resumes from ckpt_dir. Returns (graphdef, best params, history)."""
    if cfg.loss not in LOSSES:
        raise ConfigError(f"baseline.loss='{cfg.loss}' is not one of {LOSSES}")
    mesh = mesh or sharding.data_mesh()
    if cfg.batch_size % mesh.size:
        raise ConfigError(f"baseline.batch_size={cfg.batch_size} is not a multiple of the {mesh.size} devices")
    graphdef, params = build(cfg, num_items)
    ins, outs = training_windows(split, cfg.max_len)
    data = Batches(ins, outs, cfg.bucket_lengths, cfg.batch_size)
    per_epoch = len(data.plan(cfg.seed, 0))
    tx = optax.adamw(schedule(cfg, cfg.num_epochs * per_epoch), weight_decay=cfg.weight_decay)
    state = sharding.replicate({"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)}, mesh)
    end = cfg.num_epochs * per_epoch if stop_after is None else min(stop_after, cfg.num_epochs * per_epoch)
    every = cfg.eval_every_epochs * per_epoch
    # host-side selection state, checkpointed beside the parameters
    sel = sharding.replicate({"best": jnp.float32(-1.0), "bad_evals": jnp.int32(0)}, mesh)
    mngr = checkpointing.manager(os.path.join(ckpt_dir, "last")) if ckpt_dir else None
    best_mngr = checkpointing.manager(os.path.join(ckpt_dir, "best"), max_to_keep=1) if ckpt_dir else None
    step = 0
    if mngr is not None:
        (state, sel), restored = checkpointing.restore(mngr, (state, sel))
        step = int(restored or 0)
        if step:
            logging.info("baseline: resumed from step %d", step)
    best = state["params"]
    if best_mngr is not None and best_mngr.latest_step() is not None:
        best, _ = checkpointing.restore(best_mngr, state["params"])

    def train_step(st, batch, key):
        loss, grads = jax.value_and_grad(
            lambda p: loss_fn(graphdef, p, batch, key, cfg.loss, num_items, cfg.negatives))(st["params"])
        upd, opt = tx.update(grads, st["opt_state"], st["params"])
        return dict(st, params=optax.apply_updates(st["params"], upd), opt_state=opt, step=st["step"] + 1), loss

    step_fn = jax.jit(train_step, donate_argnums=0)
    key = jax.random.key(cfg.seed)
    history, losses, t0 = [], [], time.time()
    stop = False
    while step < end and not stop:
        epoch, offset = divmod(step, per_epoch)
        for batch in data.dataset(data.plan(cfg.seed, epoch), offset):
            state, loss = step_fn(state, sharding.shard_batch(batch, mesh), jax.random.fold_in(key, step))
            losses.append(loss)
            step += 1
            if step % cfg.log_every == 0 or step == end:
                vals = np.asarray(jax.device_get(losses))
                losses = []
                if not np.isfinite(vals).all():
                    raise TrainingError(f"baseline: non-finite loss before step {step}")
                if log:
                    log({"step": step, "train_loss": float(vals.mean()), "wall_s": time.time() - t0})
            if step % every == 0 or step == end:
                m, _ = evaluate(graphdef, state["params"], split, "validation", cfg.max_len, 10)
                improved, sel["best"], sel["bad_evals"] = selection.update(m["ndcg@10"], sel["best"], sel["bad_evals"])
                best = selection.keep_if_improved(improved, state["params"], best, best_mngr, step)
                rec = selection.record(step, step / per_epoch, time.time() - t0, m, improved)
                history.append(rec)
                if log:
                    log(rec)
                stop = bool(cfg.patience and int(sel["bad_evals"]) >= cfg.patience)
                if mngr is not None:  # across hosts orbax saves only global (placed) arrays
                    checkpointing.save(mngr, step, (state, sharding.replicate(sel, mesh)))
            if step >= end or stop:
                break
    return graphdef, best, history
