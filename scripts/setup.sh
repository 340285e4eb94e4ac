#!/usr/bin/env bash
# Creates .venv (if missing) and installs zero_nlp's requirements. Idempotent.
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh --dev    # runtime + tests/notebooks
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || { echo "error: '$PY -m venv' failed; install python3-venv (Debian: apt-get install python3-venv)"; exit 1; }
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" 2>/dev/null; then
  # 1) a local wheel (find-links / offline mirror), 2) CUDA build when a GPU is present,
  # 3) otherwise the CPU-only index, so a CPU machine never downloads the CUDA build.
  if python -m pip install -q --no-index --no-deps "torch==$TORCH_VERSION" 2>/dev/null; then
    python -m pip install -q "torch==$TORCH_VERSION"  # its dependencies, from the usual index
  elif command -v nvidia-smi >/dev/null 2>&1; then python -m pip install -q "torch==$TORCH_VERSION"
  else python -m pip install -q "torch==$TORCH_VERSION" --index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
  fi
fi
python -m pip install -q -r requirements.txt
if [ "${1:-}" = "--dev" ]; then python -m pip install -q -r requirements-dev.txt; fi
python -c "import torch, transformers, datasets; print(f'torch {torch.__version__}, transformers {transformers.__version__}, datasets {datasets.__version__}')"
