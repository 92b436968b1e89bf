"""Streaming under ``torchrun --nproc_per_node=2`` with ``runner_iter`` (issue 13, "What it must show" 1 and 2).

Four launches, each checking several things:

1. img2dataset-layout caption shards (plain ``tarfile``, 7/3/11/1/5/9 samples),
   no resampling: both ranks take the same number of steps (no hang at the
   pass's end), every pass's samples are disjoint across ranks, a second pass
   starts on time.
2. converter (``wds.ShardWriter``) instruction shards, resampled, two
   DataLoader workers per rank: each rank runs exactly ``iters_per_inner_epoch``
   steps per inner epoch; the uninterrupted reference for 3 and 4.
3. the same run SIGKILLed (whole process tree) right after its step-3
   checkpoint, mid inner epoch 0 (steps 1-4);
4. ``--resume`` of it: every step after the checkpoint has the reference's
   loss (1e-6), its samples in the same order on each rank, and the same final weights.

Sample ids per rank and micro-batch come from a task registered through
``run.imports`` (no test hook in the library).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from conftest import launch, launch_cmd, metrics
from test_resilience import _by_step, _kill_when, _release
from test_streaming import write_img2dataset_shards, write_instruction_shards

RECORDER = '''
import json
import os

from lavislite.common.registry import registry
from lavislite.tasks.base_task import ImageTextPretrainTask


@registry.register_task("records_stream_ids")
class RecordsStreamIds(ImageTextPretrainTask):
    """Appends each micro-batch's sample ids to <run>/ids_rank<R>.jsonl (with the pid: a resumed run is a new one)."""

    def train_step(self, model, samples):
        run = self.run_cfg
        path = os.path.join(run.output_dir, run.job_id, f"ids_rank{os.environ.get('RANK', '0')}.jsonl")
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "ids": list(samples["ids"])}) + "\\n")
        return super().train_step(model, samples)
'''


def _config(path: Path, builder: str, build_info: dict, recorder: Path, run: dict) -> Path:
    config = {
        "model": {"arch": "blip2_qwen", "model_type": "demo"},
        "datasets": {
            builder: {
                "build_info": build_info,
                "vis_processor": {"train": {"name": "blip2_image_train", "image_size": 64}},
                "text_processor": {"train": {"name": "qwen_chat", "max_len": 256}},
            }
        },
        "run": {
            "task": "records_stream_ids", "imports": [str(recorder)], "precision": "fp32", "runner": "runner_iter",
            "batch_size_train": 4, "log_freq": 1, "init_lr": 1e-3, "warmup_steps": 0, **run,
        },
    }
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    return path


def _ids(run_dir: Path, rank: int) -> list[list[list[str]]]:
    """Per process that wrote them (in order), the micro-batches' ids of one rank."""
    groups: dict[int, list[list[str]]] = {}
    for line in (run_dir / f"ids_rank{rank}.jsonl").read_text().splitlines():
        record = json.loads(line)
        groups.setdefault(record["pid"], []).append(record["ids"])
    return list(groups.values())


def test_two_ranks_stream_uneven_shards_in_equal_steps_and_resume_a_kill_exactly(tmp_path: Path) -> None:
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER)

    # 1. One pass over uneven img2dataset shards, no resampling: 36 samples -> 18 per rank -> 4 batches of 4.
    pattern = write_img2dataset_shards(tmp_path / "caps", counts=(7, 3, 11, 1, 5, 9))
    cfg = _config(tmp_path / "caps.yaml", "webdataset_caption", {"shards": pattern, "shuffle_buffer": 8}, recorder,
                  {"max_iters": 6, "iters_per_inner_epoch": 3, "num_workers": 1, "output_dir": str(tmp_path), "job_id": "caps"})
    proc = launch("train.py", ["--cfg-path", str(cfg)], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "streaming webdataset_caption: 4 batch(es) of 4 per process and pass" in proc.stderr
    [rank0], [rank1] = _ids(tmp_path / "caps", 0), _ids(tmp_path / "caps", 1)
    assert len(rank0) == len(rank1) == 6  # the same steps on both ranks; pass 0 is steps 1-4
    first_pass = [i for batch in rank0[:4] + rank1[:4] for i in batch]
    assert len(first_pass) == len(set(first_pass)) == 32  # no sample seen twice in a pass, across ranks
    second_pass = [i for batch in rank0[4:] + rank1[4:] for i in batch]
    assert len(set(second_pass)) == 16
    assert [r["epoch"] for r in metrics(tmp_path / "caps")] == [0, 0, 0, 0, 1, 1]

    # 2. Resampled converter shards, 2 workers per rank: 48 samples per pass -> 12 per stream -> 6 batches per rank.
    pattern, _ = write_instruction_shards(tmp_path / "instr", records=60)
    run = {"max_iters": 8, "iters_per_inner_epoch": 4, "num_workers": 2, "save_freq_steps": 3, "output_dir": str(tmp_path)}
    info = {"shards": pattern, "resampled": True, "samples_per_epoch": 48, "shuffle_buffer": 6}
    cfg = _config(tmp_path / "instr.yaml", "webdataset_instruction", info, recorder, {**run, "job_id": "full"})
    proc = launch("train.py", ["--cfg-path", str(cfg)], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 optimizer steps (4 per epoch)" in proc.stderr
    assert "streaming webdataset_instruction: 6 batch(es) of 4 per process and pass (2 process(es) x 2 stream(s) of 12 samples)" in proc.stderr
    full = tmp_path / "full"
    reference = _by_step(metrics(full))
    assert sorted(reference) == list(range(1, 9))
    assert [len(g) for g in _ids(full, 0)] == [len(g) for g in _ids(full, 1)] == [8]  # 4 steps per inner epoch on each rank
    assert (full / "checkpoints" / "iter_4" / "COMPLETE").exists() and (full / "checkpoints" / "iter_8" / "COMPLETE").exists()

    # 3. The same run, SIGKILLed once its step-3 checkpoint is complete (inner epoch 0 is steps 1-4).
    run_dir = tmp_path / "k"
    cfg = _config(tmp_path / "k.yaml", "webdataset_instruction", info, recorder, {**run, "job_id": "k"})
    _kill_when(launch_cmd("train.py", ["--cfg-path", str(cfg)], nproc=2), run_dir, ready="step_3", min_step=3)

    # 4. --resume: the stream continues exactly (batch 3 of 2 workers: the workers' order is rotated).
    proc = launch("train.py", ["--resume", str(run_dir)], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'step_3'} at epoch 0, batch 3, step 3" in proc.stderr
    resumed = _by_step(metrics(run_dir))
    assert sorted(resumed) == list(range(1, 9))
    for step in range(4, 9):
        assert abs(resumed[step]["loss"] - reference[step]["loss"]) <= 1e-6, (step, resumed[step], reference[step])
    for rank in (0, 1):
        [uninterrupted] = _ids(full, rank)
        after_resume = _ids(run_dir, rank)[-1]
        assert after_resume == uninterrupted[3:], rank  # the same next samples, in the same order
    final, expected = _release(run_dir), _release(full)
    for key in expected:
        torch.testing.assert_close(final[key], expected[key], atol=1e-6, rtol=0)
