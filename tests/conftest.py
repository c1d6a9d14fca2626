"""Test setup: 8 fake CPU devices so sharded code runs on a real mesh everywhere, and one
persistent XLA compilation cache for the session."""
import atexit
import os
import shutil
import tempfile

# Must happen before JAX initialises its backends.
# XLA's backend optimisation level 0 halves compile time (most of this suite's time on a
# 2-core CPU); it changes only float rounding, the same in every process of a test run.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
# The suite compiles the same tiny programs over and over (each resume test trains two or three
# times; the pipeline tests launch subprocesses, the notebook tests kernels, which inherit these
# variables). Compiles dominate on a 2-core CPU: a shared cache halves a resume test's time.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="rqsid-test-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

import pytest  # noqa: E402

DATA_DIR = os.environ.get("RQSID_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "amazon2014"))


@pytest.fixture(scope="session")
def data_dir():
    if not os.path.exists(os.path.join(DATA_DIR, "beauty", "sequential_data.txt")):
        pytest.skip(f"benchmark data not found at {DATA_DIR} (set RQSID_DATA_DIR)")
    return DATA_DIR
