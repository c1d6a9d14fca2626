#!/usr/bin/env bash
# Run the pipeline as one process of a multi-host job (TPU pod slice, multi-node GPU).
# Usage: launch/run_multihost.sh CONFIG WORKDIR [extra flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
config=$1; workdir=$2; shift 2
exec python3 -m rqsid_jax.launch --config "$config" --workdir "$workdir" --multihost --noprogress "$@"
