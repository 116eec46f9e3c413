#!/usr/bin/env bash
# One command on a fresh GPU machine: install with CUDA, then the original's VGG19-BN table (bench/gpu_table.py).
#   DC_JAX_DATA_DIR=../shared/data bash bench/gpu_table.sh [--config.FIELD=VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[cuda]'
exec .venv/bin/python bench/gpu_table.py "$@"
