"""Evaluate a model from a run config (a thin wrapper of ``lavislite.evaluate``).

    python evaluate.py --cfg-path X.yaml --checkpoint output/demo/JOB   (a run folder: its release/ is loaded)
    torchrun --nproc_per_node=8 evaluate.py --cfg-path X.yaml
"""

import sys

from lavislite.cli import run_entry
from lavislite.evaluate import main

if __name__ == "__main__":
    sys.exit(run_entry(main))
