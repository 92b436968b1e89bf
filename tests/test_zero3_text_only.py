"""ZeRO-3 with a rank whose batch holds no image while the vision path runs no backward (issue 15, defect 2).

Under ZeRO-3 every module forward gathers its partitioned parameters with a
collective, so the ranks must run the same module forwards. A rank whose batch
is text-only used to skip the vision path unless that path trained under
grad: validation by loss (``no_grad``) and training with everything but the
LLM frozen then aborted gloo ("Received data size doesn't match expected
size") or hung until ``dist_timeout_minutes``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import DEMO_DATA, all_records, demo_data_config, launch, metrics

# Everything between the pixels and the LLM frozen: only the LLM trains.
FROZEN_VISION_PATH = [f"model.freeze_{part}=true" for part in ("vit", "ln_vision", "qformer", "queries", "proj")]


def _records() -> tuple[list[dict], list[dict]]:
    """Single-image LLaVA demo records, and the same records made text-only."""
    records = [r for r in json.loads((DEMO_DATA / "llava_instruction.json").read_text()) if isinstance(r.get("image"), str)]
    text_only = []
    for rec in records:
        rec = json.loads(json.dumps(rec))
        rec.pop("image")
        rec["conversations"][0]["value"] = rec["conversations"][0]["value"].replace("<image>", "").strip()
        text_only.append(rec)
    return records, text_only


def _config(tmp_path: Path, train: list[dict], run: dict) -> Path:
    (tmp_path / "train.json").write_text(json.dumps(train))
    run = {"max_epoch": 1, "batch_size_train": 1, "num_workers": 0, "log_freq": 1, "output_dir": str(tmp_path), "job_id": "z3",
           "dist_timeout_minutes": 1, "tensorboard": False, **run}
    return demo_data_config(tmp_path / "run.yaml", "llava_instruction", tmp_path / "train.json", run)


def _zero3(cfg: Path, options: list[str]) -> str:
    proc = launch("train.py", ["--cfg-path", str(cfg), "--options", "run.deepspeed_config.zero_optimization.stage=3", *options],
                  nproc=2, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def test_zero3_trains_the_llm_alone_when_one_rank_has_no_image(tmp_path: Path) -> None:
    """3 image and 5 text-only records, batch 1 on 2 ranks: an odd count of images, so at least one
    step has an image on one rank only; the frozen vision path runs no backward there."""
    images, text_only = _records()
    train = [images[0], text_only[1], text_only[2], images[3], text_only[4], text_only[5], images[6], text_only[7]]
    stderr = _zero3(_config(tmp_path, train, {}), FROZEN_VISION_PATH)
    assert "DeepSpeed ZeRO-3, fp32, world size 2, 4 optimizer steps (4 per epoch)" in stderr
    records = metrics(tmp_path / "z3")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)


def test_zero3_validation_by_loss_when_one_rank_has_no_image(tmp_path: Path) -> None:
    """Validation (``image_text_pretrain``, under no_grad) on [image, text-only]: rank 0 gets the image,
    rank 1 the text-only record (strided shards)."""
    images, text_only = _records()
    (tmp_path / "val.json").write_text(json.dumps([images[10], text_only[11]]))
    cfg = _config(tmp_path, [images[0], images[1]], {"valid_splits": ["val"], "batch_size_eval": 1})
    ds = "datasets.llava_instruction"
    _zero3(cfg, [f"{ds}.build_info.annotations.val.storage={tmp_path / 'val.json'}", f"{ds}.vis_processor.eval.name=blip_image_eval",
                 f"{ds}.vis_processor.eval.image_size=64"])
    (valid,) = [r for r in all_records(tmp_path / "z3") if "valid" in r]
    (scores,) = valid["valid"].values()
    assert scores["n_samples"] == 2 and torch.isfinite(torch.tensor(scores["loss"]))
