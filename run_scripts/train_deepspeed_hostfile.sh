#!/usr/bin/env bash
# Multi-node training with the DeepSpeed launcher and a hostfile (run once, on the first host;
# it starts the processes on every host over passwordless ssh):
#   printf 'node1 slots=8\nnode2 slots=8\n' > hostfile
#   HOSTFILE=hostfile bash run_scripts/train_deepspeed_hostfile.sh --cfg-path X.yaml
# The launcher sets RANK / WORLD_SIZE / LOCAL_RANK, which lavislite reads like torchrun's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${HOSTFILE:?set HOSTFILE (lines of 'host slots=N')}"
exec deepspeed --hostfile "$HOSTFILE" --master_port "${MASTER_PORT:-29500}" train.py "$@"
