#!/usr/bin/env bash
# Multi-node training with torchrun: run this same command on every node, with its own NODE_RANK.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash run_scripts/train_multinode.sh --cfg-path X.yaml   # on node 0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash run_scripts/train_multinode.sh --cfg-path X.yaml   # on node 1
# Every node must see the same code, config, data paths and output_dir (a shared file system),
# since rank 0 writes the run folder and every rank writes its part of each checkpoint.
# Arguments go to train.py; add e.g. --resume output/run/JOB to continue after a failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${NNODES:?set NNODES (number of nodes)}"
: "${NODE_RANK:?set NODE_RANK (0 .. NNODES-1)}"
: "${MASTER_ADDR:?set MASTER_ADDR (node 0's address, reachable from every node)}"
MASTER_PORT="${MASTER_PORT:-29500}"
NPROC_PER_NODE="${NPROC_PER_NODE:-$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
exec torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE" \
  --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" train.py "$@"
