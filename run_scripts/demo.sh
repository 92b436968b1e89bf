#!/usr/bin/env bash
# Installs lavislite into .venv and trains the offline demo (CPU or GPU).
# Extra arguments go to train.py, e.g.: bash run_scripts/demo.sh --options run.max_epoch=2
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
python train.py --cfg-path projects/demo/train.yaml "$@"
