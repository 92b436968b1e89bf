"""Evaluate a model from a run config: the mean loss over ``run.test_splits``.

    python evaluate.py --cfg-path X.yaml --checkpoint output/demo/JOB/checkpoint_release.pth
    python evaluate.py --cfg-path X.yaml --options run.test_splits=[train] model.finetuned=/path/checkpoint_release.pth
    torchrun --nproc_per_node=8 evaluate.py --cfg-path X.yaml

Every split is read with the dataset's eval processors (no random crop or
flip), so the same checkpoint gives the same number every time.

Each rank scores its own shard (no sample counted twice), rank 0 writes
``output_dir/<job_id>/evaluate.json``. Generation metrics (COCO caption, VQA)
build on this entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime

from lavislite.common.config import add_config_args, config_from_args


def main(argv: list[str] | None = None) -> int:
    parser = add_config_args(argparse.ArgumentParser(description="lavislite evaluation"))
    parser.add_argument("--checkpoint", default=None, help="a checkpoint_release.pth to load (same as --options model.finetuned=PATH)")
    args = parser.parse_args(argv)
    if args.checkpoint:
        # One loading path for both spellings: the model loads it and reports.
        args.options = [*args.options, f"model.finetuned={args.checkpoint}", "model.load_finetuned=true"]
    cfg = config_from_args(args, purpose="evaluate")
    if cfg is None:
        return 2

    import torch
    from torch.utils.data import DataLoader
    
    from lavislite.common import dist_utils
    from lavislite.common.logger import logger, setup_logger
    from lavislite.tasks import setup_task

    run = cfg.run_cfg
    dist_utils.init_process_group(run.dist_backend)
    job_id = dist_utils.all_gather_object(run.job_id or datetime.now().strftime("%Y%m%d%H%M%S"))[0]
    out_dir = os.path.join(run.output_dir, job_id)
    setup_logger()
    task = setup_task(cfg)
    datasets = task.build_datasets(cfg, for_evaluation=True)
    model = task.build_model(cfg)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    model = model.to(device).eval()

    results: dict[str, float] = {}
    splits = list(run.test_splits) or list(run.valid_splits)
    if not splits:
        print("error: set run.test_splits (or run.valid_splits) to the splits to evaluate", file=sys.stderr)
        return 2
    for name, by_split in datasets.items():
        for split in splits:
            if split not in by_split:
                continue
            ds = by_split[split]
            # A strided shard, not DistributedSampler: that one pads with repeats,
            # which would count samples twice when len(ds) % world_size != 0.
            shard = list(range(dist_utils.get_rank(), len(ds), dist_utils.get_world_size()))
            loader = DataLoader(ds, batch_size=run.batch_size_eval, sampler=shard, collate_fn=ds.collater, num_workers=run.num_workers)
            seen: set[str] = set()
            total = torch.zeros(2, dtype=torch.float64)
            with torch.no_grad():
                for samples in loader:
                    seen.update(samples["ids"])
                    out = model(samples)
                    total += torch.tensor([out["loss"].item() * int(out["n_tokens"]), int(out["n_tokens"])], dtype=torch.float64)
            gathered = dist_utils.all_gather_object((total.tolist(), sorted(seen)))
            ids = set().union(*(set(g[1]) for g in gathered))
            loss_sum = sum(g[0][0] for g in gathered)
            n_tok = sum(g[0][1] for g in gathered)
            results[f"{name}/{split}/loss"] = loss_sum / max(n_tok, 1)
            results[f"{name}/{split}/n_samples"] = len(ids)
    if dist_utils.is_main_process():
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "evaluate.json"), "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
        logger.info("evaluation: %s", json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
