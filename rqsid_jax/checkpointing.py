"""Orbax helpers: a CheckpointManager over pure pytrees, restore onto an abstract target."""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


def manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
    os.makedirs(directory, exist_ok=True)
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, target: Any, step: Optional[int] = None) -> tuple[Any, Optional[int]]:
    """Restores the latest (or given) step onto the structure/shardings of `target`."""
    step = mngr.latest_step() if step is None else step
    if step is None:
        return target, None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    return out["state"], step
