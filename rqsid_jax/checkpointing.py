"""Orbax helpers: a CheckpointManager over pure pytrees, restore onto an abstract target."""
from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from rqsid_jax.errors import StorageError


class _OrbaxThreadErrors(logging.Filter):
    """Drops orbax's per-thread error logs (each with its traceback) of a failed save: save()
    re-raises the failure as one StorageError line, so they only repeat it (~500 lines on a
    full disk)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for orbax's error records (the failure is re-raised as one line)."""
        return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


logging.getLogger("absl").addFilter(_OrbaxThreadErrors())


# Set once save() has reported a failed write: the late storage callbacks that follow are that
# failure's echo, already said in its one StorageError line.
_save_failed = False


def _late_callback() -> None:
    """A RuntimeError('Event loop is closed') from a storage thread: silent after a reported failed
    save (it may arrive after the error line, at interpreter exit, and must not follow it), one
    warning line otherwise."""
    if not _save_failed:
        logging.warning("orbax: a storage callback arrived after its event loop closed")


def _quiet_closed_loop(hook):
    """Wraps sys.excepthook / sys.unraisablehook so that a RuntimeError('Event loop is closed') is
    no bare traceback: after a failed save, tensorstore's C++ threads still complete their futures
    onto orbax's event loop, already closed, and CPython prints that through these hooks beside
    save()'s one-line StorageError. Every other error goes to the original hook."""

    def closed(exc) -> bool:
        return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"

    if hook is sys.excepthook:
        def wrapped(kind, exc, tb):
            if closed(exc):
                _late_callback()
            else:
                hook(kind, exc, tb)
    else:
        def wrapped(unraisable):
            if closed(unraisable.exc_value):
                _late_callback()
            else:
                hook(unraisable)
    return wrapped


sys.excepthook = _quiet_closed_loop(sys.excepthook)
sys.unraisablehook = _quiet_closed_loop(sys.unraisablehook)


def manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """A manager of `directory` (created by process 0; orbax's create=True syncs the others)."""
    if jax.process_index() == 0:
        os.makedirs(directory, exist_ok=True)
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Writes step `step` and waits for it; a storage failure is one StorageError line (the
    checkpoints already there are kept: orbax writes into a temporary folder first)."""
    try:
        mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
        mngr.wait_until_finished()
    except (OSError, ValueError) as e:
        global _save_failed
        _save_failed = True
        text = str(e)
        reason = re.search(r"Failed to write [^:]*: ([^\[]+)", text)
        why = reason.group(1).strip() if reason else (e.strerror if isinstance(e, OSError) and e.strerror
                                                      else text.splitlines()[0][:200])
        raise StorageError(f"{mngr.directory}: checkpoint of step {step} not written ({why})") from None


def restore(mngr: ocp.CheckpointManager, target: Any, step: Optional[int] = None) -> tuple[Any, Optional[int]]:
    """Restores the latest (or given) step onto the structure/shardings of `target`."""
    step = mngr.latest_step() if step is None else step
    if step is None:
        return target, None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    return out["state"], step
