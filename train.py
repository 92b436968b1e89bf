"""Train a model from a run config (a thin wrapper of ``lavislite.train``).

    python train.py --cfg-path projects/demo/train.yaml
    torchrun --nproc_per_node=8 train.py --cfg-path X.yaml --options run.init_lr=1e-4
"""

import sys

from lavislite.cli import run_entry
from lavislite.train import main

if __name__ == "__main__":
    sys.exit(run_entry(main))
