"""Model selection on a validation score, shared by the trainers: best score and the count of
evaluations without a gain, and the validation record each evaluation logs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rqsid_jax import checkpointing


def update(score: float, best, bad_evals) -> tuple[bool, jax.Array, jax.Array]:
    """(improved, new best, new bad-evaluation count). Compared in float32, the precision the
    best score is kept (and checkpointed) in: a float64 score equal to the best would otherwise
    beat its own float32 rounding."""
    improved = bool(np.float32(score) > np.float32(best))
    return (improved, jnp.float32(max(np.float32(score), np.float32(best))),
            jnp.int32(0 if improved else int(bad_evals) + 1))


def keep_if_improved(improved: bool, params, best_params, best_mngr, step: int):
    """A copy of params (also checkpointed to best_mngr) when improved, else best_params."""
    if not improved:
        return best_params
    best_params = jax.tree.map(jnp.copy, params)
    if best_mngr is not None:
        checkpointing.save(best_mngr, step, best_params)
    return best_params


def record(step: int, epoch: float, wall_s: float, metrics: dict, improved: bool) -> dict:
    """One validation record of a learning curve (metrics as val_<name>, without 'users')."""
    return {"step": step, "epoch": epoch, "wall_s": wall_s,
            **{f"val_{k}": v for k, v in metrics.items() if k != "users"}, "improved": improved}
