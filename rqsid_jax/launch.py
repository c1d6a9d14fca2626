"""Entry point: python -m rqsid_jax.launch --config configs/<experiment>.py --workdir <dir>.

Thin: parses flags and calls rqsid_jax.pipeline.run, which tests and notebooks call directly.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from rqsid_jax.errors import RqsidError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)  # unknown --config.x fields fail loudly
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for every stage's artifacts.")
_STAGES = flags.DEFINE_list("stages", None, "Subset of stages to run (default: the config's stages).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (TPU pod / multi-GPU).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")
_PARTIAL = flags.DEFINE_bool("partial", False, "Allow stages to use upstream stages that were stopped early "
                             "(e.g. evaluate the best checkpoint of an interrupted training).")
_REUSE_FROM = flags.DEFINE_list("reuse_from", [], "Workdirs whose finished stages are copied in where they were "
                                "built for this config (same fingerprint); only read.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
    """absl's flag parsing, with one error line instead of a traceback: an unknown or mistyped
    --config.x override, a missing required flag."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
        overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
        what = (f"unknown config field '{str(e).strip(chr(34) + chr(39) + ' ')}'"
                if isinstance(e, (AttributeError, KeyError)) else str(e))
        print(f"error: {what}" + (f" (overrides: {overrides})" if overrides else ""), file=sys.stderr)
        sys.exit(2)


def init_distributed() -> None:
    """jax.distributed.initialize(): auto-detected on TPU pods and SLURM / MPI GPU clusters, or
    from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (any host, CPUs too: their
    cross-process collectives then go through gloo)."""
    import jax

    env = os.environ
    kwargs = {}
    if env.get("JAX_NUM_PROCESSES") and env.get("JAX_PROCESS_ID"):
        kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"]))
        if env.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


def _exit_with(line: str) -> None:
    """Prints the one error line and exits at once: a normal interpreter exit would let
    orbax's background threads, cut short by the error, print tracebacks while shutting down."""
    print(line, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def main(argv):
    """Runs the pipeline for --config/--workdir; a user error is one line and exit 1."""
    del argv
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save/restore at INFO
    if _MULTIHOST.value or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        init_distributed()
    from rqsid_jax import pipeline

    try:
        results = pipeline.run(_CONFIG.value, _WORKDIR.value, _STAGES.value, progress=_PROGRESS.value,
                               partial=_PARTIAL.value, reuse_from=_REUSE_FROM.value)
    except RqsidError as e:
        _exit_with(f"error: {e}")
    except OSError as e:  # a read-only or full disk, a workdir path through a file: one line
        where = f"{e.filename}: " if e.filename else ""
        _exit_with(f"error: {where}{e.strerror or e}")
    print(f"done: {', '.join(results)}; report at {os.path.join(_WORKDIR.value, 'report.md')}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
