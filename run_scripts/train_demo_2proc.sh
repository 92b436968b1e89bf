#!/usr/bin/env bash
# The demo on two processes (DeepSpeed ZeRO-2; add --options run.deepspeed_config.zero_optimization.stage=3 for ZeRO-3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
torchrun --nproc_per_node="${NPROC:-2}" train.py --cfg-path projects/demo/train.yaml "$@"
