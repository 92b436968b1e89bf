"""The bad-sample policy (``on_bad_sample: error | skip``, ``max_bad_fraction``) on real files.

Real annotation files (LLaVA, MiniGPT4Qwen, JSON lines) and real images (JPEGs
written by PIL, one cut in half, one with an EXIF orientation) read by the
built-in builders through ``load_dataset``; one tiny training run through
``train.py`` checks ``bad_samples.jsonl`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lavislite.cli import user_message
from lavislite.datasets import load_dataset
from lavislite.datasets.bad_samples import BadSampleError, BadSampleLimitError, BadSampleTracker
from lavislite.processors.chat_processor import SampleError

CONTEXT = {"tokenizer": "builtin:qwen2.5", "num_image_tokens": 4}


def _processors(max_len: int = 256, truncation: str = "cut") -> dict[str, Any]:
    return {
        "vis_processor": {"train": {"name": "blip_image_eval", "image_size": 32}, "eval": {"name": "blip_image_eval", "image_size": 32}},
        "text_processor": {
            "train": {"name": "qwen_chat", "max_len": max_len, "truncation": truncation},
            "eval": {"name": "qwen_chat", "max_len": max_len},
        },
    }


def _jpeg(colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 40), **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", **save)
    return buf.getvalue()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        (folder / f"ok_{i}.jpg").write_bytes(_jpeg((60 * i, 100, 200 - 40 * i)))
    whole = _jpeg(size=(64, 64))
    (folder / "corrupt.jpg").write_bytes(whole[: len(whole) // 2])  # a download cut short
    return folder


def _llava(sample_id: str, image: str | None, question: str = "What colour is it?", answer: Any = "red") -> dict[str, Any]:
    record: dict[str, Any] = {"id": sample_id, "conversations": [{"from": "human", "value": f"<image>\n{question}" if image else question}, {"from": "gpt", "value": answer}]}
    if image:
        record["image"] = image
    return record


def _build(builder: str, ann: Path, images: Path, policy: str = "error", fraction: float = 0.5, **processors: Any) -> Any:
    overrides = {
        "build_info": {"annotations": {"train": {"storage": str(ann)}}, "images": {"storage": str(images)}},
        "on_bad_sample": policy,
        "max_bad_fraction": fraction,
        **_processors(**processors),
    }
    return load_dataset(builder, overrides=overrides, context=CONTEXT)["train"]


def _write(path: Path, records: list[Any]) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


# -- a corrupt image (found when it is read, in a worker) ---------------------------------------
def test_corrupt_image_with_error_names_the_file_index_and_image_also_from_a_worker(tmp_path: Path, images: Path) -> None:
    ann = _write(tmp_path / "ann.json", [_llava("a", "ok_0.jpg"), _llava("b", "corrupt.jpg"), _llava("c", "ok_1.jpg")])
    ds = _build("llava_instruction", ann, images, "error")
    assert len(ds) == 3  # the file exists: the build cannot know it does not decode
    with pytest.raises(BadSampleError) as info:
        ds[1]
    message = str(info.value)
    assert f"bad sample {ann}[1] (id=b): cannot read image {images / 'corrupt.jpg'}" in message
    assert "datasets.llava_instruction.on_bad_sample=skip" in message
    # The same from a DataLoader worker: the entry point's one line names the file, the index and the image.
    batches = iter(DataLoader(ds, batch_size=3, num_workers=1, collate_fn=ds.collater))
    with pytest.raises(BadSampleError) as info:
        next(batches)
    line = user_message(info.value)
    del batches, info  # the worker stops now, not at some later garbage collection
    assert "\n" not in line and f"{ann}[1] (id=b)" in line and "corrupt.jpg" in line


def test_corrupt_image_with_skip_is_replaced_by_the_next_sample_and_its_record_rides_in_the_batch(tmp_path: Path, images: Path) -> None:
    ann = _write(tmp_path / "ann.json", [_llava("a", "ok_0.jpg"), _llava("b", "corrupt.jpg"), _llava("c", "ok_1.jpg")])
    ds = _build("llava_instruction", ann, images, "skip")
    item = ds[1]
    assert item["id"] == "c"  # the next good sample, so the batch keeps its size
    assert torch.equal(item["input_ids"], ds[2]["input_ids"]) and torch.equal(item["image"], ds[2]["image"])
    (record,) = item["bad_samples"]
    assert record["dataset"] == "llava_instruction" and record["source"] == str(ann) and record["key"] == "1" and record["id"] == "b"
    assert record["reason"].startswith(f"cannot read image {images / 'corrupt.jpg'}")
    batch = ds.collater([ds[0], ds[1], ds[2]])
    assert batch["input_ids"].shape[0] == 3 and batch["ids"] == ["a", "c", "c"]
    assert batch["bad_samples"] == [record]
    assert "bad_samples" not in ds.collater([ds[0], ds[2]])  # absent when nothing was skipped
    # The last sample wraps around to the first.
    ann2 = _write(tmp_path / "ann2.json", [_llava("a", "ok_0.jpg"), _llava("b", "corrupt.jpg")])
    assert _build("llava_instruction", ann2, images, "skip")[1]["id"] == "a"


# -- a record whose image file is not there (found at build time) --------------------------------
def test_missing_image_file_error_names_the_record_and_skip_drops_it(tmp_path: Path, images: Path) -> None:
    ann = _write(tmp_path / "ann.json", [_llava("a", "ok_0.jpg"), _llava("b", "ok_1.jpg"), _llava("c", "gone.jpg")])
    with pytest.raises(SampleError) as info:
        _build("llava_instruction", ann, images, "error")
    assert str(info.value) == f"{ann}[2] (id=c): image not on disk: {images / 'gone.jpg'}"
    ds = _build("llava_instruction", ann, images, "skip")
    assert [s.id for s in ds.samples] == ["a", "b"]
    (record,) = ds.bad_records
    assert record.to_dict() == {"dataset": "llava_instruction", "source": str(ann), "key": "2", "reason": f"image not on disk: {images / 'gone.jpg'}", "id": "c"}


# -- a JSON that does not parse ---------------------------------------------------------------
def test_json_that_does_not_parse_names_file_line_and_column_under_both_policies(tmp_path: Path, images: Path) -> None:
    ann = tmp_path / "broken.json"
    ann.write_text('[{"id": "a", "image": "ok_0.jpg",\n  "conversations": [}]\n', encoding="utf-8")
    for policy in ("error", "skip"):  # a JSON list cannot be read past its first syntax error
        with pytest.raises(SampleError, match=rf"^{ann}: invalid JSON at line 2, column 21: Expecting value$"):
            _build("llava_instruction", ann, images, policy)
    # A JSON-lines file: one bad line is one bad record.
    lines = tmp_path / "ann.jsonl"
    lines.write_text(json.dumps(_llava("a", "ok_0.jpg")) + "\n{not json\n" + json.dumps(_llava("c", "ok_1.jpg")) + "\n", encoding="utf-8")
    with pytest.raises(SampleError, match=rf"^{lines}: invalid JSON at line 2, column 2: "):
        _build("llava_instruction", lines, images, "error")
    ds = _build("llava_instruction", lines, images, "skip")
    assert [s.id for s in ds.samples] == ["a", "c"]
    assert [(r.source, r.key) for r in ds.bad_records] == [(str(lines), "line 2")]


def test_non_utf8_annotation_file_is_named_with_the_byte_position(tmp_path: Path, images: Path) -> None:
    ann = tmp_path / "latin1.json"
    text = json.dumps([_llava("a", "ok_0.jpg", answer="café")], ensure_ascii=False)
    ann.write_bytes(text.encode("latin-1"))
    position = text.encode("latin-1").index(b"\xe9")
    for policy in ("error", "skip"):
        with pytest.raises(SampleError) as info:
            _build("llava_instruction", ann, images, policy)
        assert str(info.value).startswith(f"{ann}: not UTF-8 text: byte {position} (line 1, column {position + 1}) is 0xe9")


# -- records without a conversation: every problem at once ------------------------------------------
def test_every_bad_record_is_reported_together_up_to_20_then_a_count(tmp_path: Path, images: Path) -> None:
    records: list[Any] = [_llava("good0", "ok_0.jpg"), _llava("good1", "ok_1.jpg")]
    records += [{"id": f"x{i}", "image": "ok_2.jpg"} for i in range(24)]  # no conversation
    records.append({"id": "empty", "image": "ok_2.jpg", "conversations": []})
    ann = _write(tmp_path / "ann.json", records)
    with pytest.raises(SampleError) as info:
        _build("llava_instruction", ann, images, "error")
    lines = str(info.value).splitlines()
    assert lines[0] == f"25 bad record(s) in {ann} (of 27); datasets.llava_instruction.on_bad_sample=skip leaves them out:"
    assert lines[1] == f"    {ann}[2] (id=x0): missing or empty 'conversations' (LLaVA format)"
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "    ... and 5 more"
    # skip: past max_bad_fraction it is still an error, naming the option; under it, the records are left out.
    with pytest.raises(BadSampleLimitError, match=r"25 of 27 record\(s\) of .* are bad \(92.59%\), more than datasets.llava_instruction.max_bad_fraction=0.5"):
        _build("llava_instruction", ann, images, "skip", fraction=0.5)
    ds = _build("llava_instruction", ann, images, "skip", fraction=1.0)
    assert [s.id for s in ds.samples] == ["good0", "good1"] and len(ds.bad_records) == 25
    assert ds.bad_records[-1].key == "26" and ds.bad_records[-1].reason == "missing or empty 'conversations' (LLaVA format)"
    # MiniGPT4Qwen: a record without its reply.
    mg = _write(tmp_path / "mg.json", [{"id": "m0", "image": "ok_0.jpg", "instruction": "<ImageHere> Colour?", "output": "red"}, {"id": "m1", "image": "ok_1.jpg", "instruction": "<ImageHere> Colour?"}])
    with pytest.raises(SampleError, match=rf"^{mg}\[1\] \(id=m1\): missing key 'output'"):
        _build("minigpt4_instruction", mg, images, "error")
    assert [s.id for s in _build("minigpt4_instruction", mg, images, "skip").samples] == ["m0"]


def test_a_number_or_a_list_where_text_belongs_is_an_error_not_text(tmp_path: Path, images: Path) -> None:
    mg = _write(
        tmp_path / "mg.json",
        [
            {"id": "m0", "image": "ok_0.jpg", "instruction": "<ImageHere> How many sides?", "output": 42},
            {"id": "m1", "image": "ok_1.jpg", "instruction": ["<ImageHere> Colour?", ["a", "list"]], "output": ["red", "yes"]},
            {"id": "m2", "image": "ok_2.jpg", "instruction": "<ImageHere> Colour?", "output": "blue"},
        ],
    )
    with pytest.raises(SampleError) as info:
        _build("minigpt4_instruction", mg, images, "error")
    lines = str(info.value).splitlines()
    assert lines[1] == f"    {mg}[0] (id=m0): 'output': expected text (a string), got int 42"
    assert lines[2] == f"    {mg}[1] (id=m1): 'instruction'[1]: expected text (a string), got list ['a', 'list']"
    llava = _write(tmp_path / "llava.json", [_llava("a", "ok_0.jpg", answer=7.5), _llava("b", "ok_1.jpg")])
    with pytest.raises(SampleError, match=r"\[0\] \(id=a\): conversations\[1\].value: expected text \(a string\), got float 7.5$"):
        _build("llava_instruction", llava, images, "error")
    assert [s.id for s in _build("llava_instruction", llava, images, "skip").samples] == ["b"]


# -- a reply cut by max_len --------------------------------------------------------------------
def test_a_reply_cut_by_max_len_is_counted_and_with_drop_sample_left_out(tmp_path: Path, images: Path) -> None:
    long_reply = " ".join(["the shape is a small red circle"] * 12)
    ann = _write(tmp_path / "ann.json", [_llava("long", "ok_0.jpg", answer=long_reply), _llava("short", "ok_1.jpg")])
    ds = _build("llava_instruction", ann, images, "error", max_len=48)
    cut, whole = ds[0], ds[1]
    assert len(cut["input_ids"]) == 48 and cut["truncated"] is True
    im_end = ds.text_processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end not in cut["labels"].tolist()  # what is counted: the reply lost its end
    assert "truncated" not in whole and im_end in whole["labels"].tolist()
    assert ds.collater([cut, whole])["truncated"] == 1
    # drop_sample: left out as a bad sample with its reason, even under on_bad_sample: error.
    for policy in ("error", "skip"):
        dropping = _build("llava_instruction", ann, images, policy, max_len=48, truncation="drop_sample")
        item = dropping[0]
        assert item["id"] == "short"
        (record,) = item["bad_samples"]
        assert record["key"] == "0" and record["reason"] == "a reply is cut by max_len=48 (text_processor truncation: drop_sample)"


# -- EXIF orientation ---------------------------------------------------------------------------
def test_an_exif_rotated_jpeg_loads_upright(tmp_path: Path, images: Path) -> None:
    from lavislite.processors.transforms import load_image

    # Stored 64 wide x 32 high, left half red, right half blue, tagged "rotate 90 clockwise to show" (Orientation 6).
    stored = Image.new("RGB", (64, 32), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", exif=exif, quality=95)
    (images / "rotated.jpg").write_bytes(buf.getvalue())
    for source in (images / "rotated.jpg", str(images / "rotated.jpg"), buf.getvalue(), io.BytesIO(buf.getvalue())):
        upright = load_image(source)  # type: ignore[arg-type]
        assert upright.size == (32, 64) and upright.mode == "RGB"
        top, bottom = upright.getpixel((16, 8)), upright.getpixel((16, 56))
        assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60  # red on top: shown as the camera saw it
    # Through a JSON dataset: the processed tensor's top rows are the red ones.
    ann = _write(tmp_path / "ann.json", [_llava("r", "rotated.jpg")])
    pixels = _build("llava_instruction", ann, images)[0]["image"][0]
    assert pixels[0, :8].mean() > pixels[2, :8].mean() and pixels[2, -8:].mean() > pixels[0, -8:].mean()


# -- the run's count: max_bad_fraction ------------------------------------------------------------
def test_max_bad_fraction_exceeded_stops_with_a_clear_message() -> None:
    tracker = BadSampleTracker(limits={"llava_instruction": 0.01})
    record = {"dataset": "llava_instruction", "source": "/d/a.json", "key": "7", "reason": "cannot read image /d/x.jpg"}
    tracker.update([record], trained=7)  # 1 of 8: tolerated (the share is taken over >= 1 / 0.01 samples)
    for _ in range(11):
        tracker.update([], trained=8)
    assert (tracker.read, tracker.bad) == (96, 1)
    with pytest.raises(BadSampleLimitError) as info:
        tracker.update([{**record, "key": "99"}], trained=7)
    assert str(info.value).startswith(
        "datasets.llava_instruction: 2 bad sample(s) of 104 read so far (1.92%), more than max_bad_fraction=0.01 "
        "(datasets.llava_instruction.max_bad_fraction); stopping the run. The last: /d/a.json key 99: cannot read image /d/x.jpg."
    )
    # Past 1 / max_bad_fraction samples, the plain share counts; a checkpoint's state resumes the counts.
    tracker = BadSampleTracker(limits={"d": 0.01})
    tracker.update([{"dataset": "d"}] * 10, trained=990)
    resumed = BadSampleTracker(limits={"d": 0.01})
    resumed.load_state(json.loads(json.dumps(tracker.state())))
    assert resumed.metrics() == {"bad_samples": 10, "bad_samples/d": 10, "truncated_replies": 0}
    with pytest.raises(BadSampleLimitError):
        resumed.update([{"dataset": "d"}], trained=0)  # 11 of 1001


def test_the_policy_keys_are_typed_config(tmp_path: Path) -> None:
    from lavislite.common.config import load_dataset_config
    from lavislite.common.schema import ConfigError

    cfg = load_dataset_config("llava_instruction")
    assert (cfg.on_bad_sample, cfg.max_bad_fraction) == ("error", 0.01)
    with pytest.raises(ConfigError, match=r"datasets.llava_instruction.on_bad_sample"):
        load_dataset_config("llava_instruction", {"on_bad_sample": "ignore"})
    with pytest.raises(ConfigError, match=r"datasets.llava_instruction.max_bad_fraction: must be between 0 and 1, got 2"):
        load_dataset_config("llava_instruction", {"max_bad_fraction": 2})


# -- one tiny training run with skip ------------------------------------------------------------------
@pytest.mark.slow
def test_a_skip_run_finishes_and_lists_what_it_skipped(tmp_path: Path) -> None:
    from conftest import DEMO_DATA, demo_data_config, launch

    records = json.loads((DEMO_DATA / "minigpt4_instruction.json").read_text())[:15]
    whole = (DEMO_DATA / "images" / records[0]["image"]).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 3])
    records.insert(6, {**records[0], "id": "gone", "image": "no_such_image.jpg"})  # dropped at build time
    records.insert(9, {"id": "mute", "image": records[1]["image"], "instruction": "<Img><ImageHere></Img> Colour?"})  # no output
    records.append({**records[2], "id": "cut", "image": str(tmp_path / "cut.jpg")})  # fails in a worker
    ann = _write(tmp_path / "ann.json", records)
    out = tmp_path / "out"
    cfg = demo_data_config(
        tmp_path / "run.yaml", "minigpt4_instruction", ann,
        {"output_dir": str(out), "job_id": "skip", "batch_size_train": 4, "max_epoch": 1, "log_freq": 1, "num_workers": 1, "warmup_steps": 0},
    )
    proc = launch("train.py", ["--cfg-path", str(cfg), "--options", "datasets.minigpt4_instruction.on_bad_sample=skip", "datasets.minigpt4_instruction.max_bad_fraction=0.2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / "skip"
    listed = [json.loads(line) for line in (run / "bad_samples.jsonl").read_text().splitlines()]
    build, train = [r for r in listed if r["phase"] == "build"], [r for r in listed if r["phase"] == "train"]
    assert [(r["source"], r["key"], r["id"]) for r in build] == [(str(ann), "9", "mute"), (str(ann), "6", "gone")]
    assert build[0]["reason"].startswith("missing key 'output'") and build[1]["reason"].startswith("image not on disk: ")
    (cut,) = train  # 16 samples, batch 4: every sample is read once
    assert (cut["dataset"], cut["source"], cut["key"], cut["id"], cut["rank"], cut["epoch"]) == ("minigpt4_instruction", str(ann), "17", "cut", 0, 0)
    assert cut["reason"].startswith(f"cannot read image {tmp_path / 'cut.jpg'}")
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(line)]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in steps)
    assert [r["bad_samples"] for r in steps] == [2 + (r["step"] >= cut["step"]) for r in steps]
    assert steps[-1]["bad_samples/minigpt4_instruction"] == 3 and steps[-1]["truncated_replies"] == 0
    assert "skipped bad sample (minigpt4_instruction)" in proc.stderr


def _two_rank_worker(rank: int, port: int, out: str) -> None:
    """One of two gloo ranks feeding the runner's bad-sample step three batches, then one too many."""
    import torch.distributed as dist

    from lavislite.runners.runner_base import RunnerBase

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    runner = RunnerBase.__new__(RunnerBase)  # only the bad-sample bookkeeping, no model or engine
    runner.output_dir, runner.global_step, runner.datasets, runner.bad_writer, runner.metrics, runner.tb = out, 0, {}, None, None, None
    runner.bad_tracker = BadSampleTracker(limits={"d": 0.03})
    runner.setup_bad_samples()

    def record(key: str) -> dict[str, str]:
        return {"dataset": "d", "source": f"shard-{rank}.tar", "key": key, "reason": "cannot read image"}

    per_step = {1: [record("a")], 2: [record("b")] if rank == 1 else [], 3: []}
    for step, records in per_step.items():
        batch = {"ids": [f"{rank}-{step}-{i}" for i in range(40)], "bad_samples": records, "truncated": rank}
        runner.take_bad_samples(batch, epoch=0)
        assert "bad_samples" not in batch and "truncated" not in batch  # popped before the forward
        runner.global_step = step
    counts = {"read": runner.bad_tracker.read, "metrics": runner.bad_tracker.metrics()}
    try:
        runner.take_bad_samples({"ids": ["x"], "bad_samples": [record(f"c{k}") for k in range(3)]}, epoch=0)
    except BadSampleLimitError as exc:
        counts["stopped"] = str(exc)
    runner.close()
    Path(out, f"rank{rank}.json").write_text(json.dumps(counts))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_records_all_reach_rank_0s_file_and_both_ranks_stop_together(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from conftest import free_port

    # fork: the ranks inherit the imported modules (spawn would import torch and lavislite again, twice).
    mp.start_processes(_two_rank_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    lines = [json.loads(line) for line in (tmp_path / "bad_samples.jsonl").read_text().splitlines()]
    assert [(r["rank"], r["source"], r["key"], r["step"]) for r in lines[:3]] == [(0, "shard-0.tar", "a", 1), (1, "shard-1.tar", "a", 1), (1, "shard-1.tar", "b", 2)]
    assert len(lines) == 3 + 6  # the last batch's records are written before the run stops
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # the same counts, the same decision, on every rank
    assert ranks[0]["read"] == 3 * 80 + 3 and ranks[0]["metrics"] == {"bad_samples": 3, "bad_samples/d": 3, "truncated_replies": 3}
    assert ranks[0]["stopped"].startswith("datasets.d: 9 bad sample(s) of 251 read so far")
