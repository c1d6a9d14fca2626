#!/usr/bin/env bash
# Set up a Cloud TPU VM: JAX for TPU, then this package (pinned versions from setup.py).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -U pip
python3 -m pip install "jax[tpu]==0.10.2" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
python3 -m pip install -e .
python3 -c "import jax; print(jax.device_count(), 'devices:', jax.devices())"
