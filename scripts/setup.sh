#!/usr/bin/env bash
# Create (or reuse) the local virtual environment .venv with everything the workflow and the
# tests need, pinned in pyproject.toml. Idempotent: a second run only checks.
#   scripts/setup.sh          # runtime + tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.masters-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch/torchvision first and pinned together: the CUDA wheels also run on the CPU and keep
# torchvision importable (the stock Qwen processors need it).
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
DS_BUILD_OPS=0 .venv/bin/python -m pip install --quiet -e ".[test]"  # deepspeed: no compiled ops
.venv/bin/python -m pip check
echo "$want" > "$stamp"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
