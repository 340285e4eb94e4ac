#!/usr/bin/env bash
# Quickstart 2: set up (with dev requirements), check `# Copied from` copies, run every folder's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
. .venv/bin/activate
python utils/check_copies.py
python -m pytest "$@"
