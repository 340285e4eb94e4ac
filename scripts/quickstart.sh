#!/usr/bin/env bash
# Quickstart 1: set up, train chinese_classifier's offline default, print test metrics and predictions.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
cd chinese_classifier && bash train.sh
