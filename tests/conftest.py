"""Test setup: 8 fake CPU devices so sharded code runs on a real mesh everywhere."""
import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
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
