"""webdataset streaming without launching processes: shard discovery, the split over ranks and workers,
resampling, fast-forward, the same batches as the JSON dataset, bad samples, the converter.

Shards are written two ways: with plain ``tarfile`` in img2dataset's layout
(``KEY.jpg`` + ``KEY.txt`` + ``KEY.json``, no stats file: counted from the tar
headers) and with the converter (``wds.ShardWriter``), with uneven sample
counts per shard. Images are the demo's.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from conftest import DEMO_DATA

from lavislite.common.errors import DataError, MissingFileError
from lavislite.datasets import load_dataset
from lavislite.datasets.datasets.instruction_dataset import InstructionDataset, parse_llava
from lavislite.datasets.datasets.wds_dataset import ShardStream, caption_sample, count_samples, expand_shards
from lavislite.datasets.make_shards import main as make_shards_main

CONTEXT = {"tokenizer": "builtin:qwen2.5", "num_image_tokens": 8}
IMAGES = sorted((DEMO_DATA / "images").glob("*.jpg"))
UNEVEN = (7, 3, 11, 1, 5)  # 27 samples in 5 shards


def write_img2dataset_shards(folder: Path, counts: tuple[int, ...] = UNEVEN, corrupt: dict[int, str] | None = None) -> str:
    """Caption shards as img2dataset writes them (``00000.tar``: ``KEY.jpg``, ``KEY.txt``, ``KEY.json``), with plain tarfile.

    ``corrupt``: {global sample index: "image" (bytes that are no JPEG) | "no_image" (the member left out)}.

    Returns:
        the brace pattern of the shards.
    """
    folder.mkdir(parents=True, exist_ok=True)
    index = 0
    for shard, count in enumerate(counts):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for _ in range(count):
                key = f"{shard:05d}{index:04d}"
                image = IMAGES[index % len(IMAGES)]
                members = {
                    "jpg": image.read_bytes(),
                    "txt": f"a picture, number {index}".encode(),
                    "json": json.dumps({"key": key, "caption": f"a picture, number {index}", "status": "success"}).encode(),
                }
                fault = (corrupt or {}).get(index)
                if fault == "image":
                    members["jpg"] = b"not a jpeg at all"
                elif fault == "no_image":
                    del members["jpg"]
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                index += 1
    return str(folder / f"{{00000..{len(counts) - 1:05d}}}.tar")


def write_instruction_shards(folder: Path, records: int = 40, per_shard: int = 13) -> tuple[str, Path]:
    """The demo's first LLaVA records through the converter (``wds.ShardWriter``): 13, 13, 13, 1 samples.

    Returns:
        the shard pattern the converter printed, and the annotation file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ann = folder / "llava.json"
    ann.write_text(json.dumps(json.loads((DEMO_DATA / "llava_instruction.json").read_text())[:records]))
    assert make_shards_main(["--annotations", str(ann), "--images", str(DEMO_DATA / "images"), "--out", str(folder / "shards"), "--samples-per-shard", str(per_shard)]) == 0
    last = (records - 1) // per_shard
    return str(folder / "shards" / f"{{00000..{last:05d}}}.tar"), ann


def raw_stream(pattern: str, **kwargs) -> ShardStream:  # type: ignore[no-untyped-def]
    """A stream for reading raw samples only (no processors)."""
    return ShardStream("test", expand_shards(pattern), lambda raw: caption_sample(raw, "<image>"), None, None, **kwargs)


@pytest.fixture(scope="module")
def caption_shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_img2dataset_shards(tmp_path_factory.mktemp("img2dataset"))


def test_a_pattern_matching_nothing_or_missing_shards_fail_naming_the_pattern(tmp_path: Path, caption_shards: str) -> None:
    with pytest.raises(MissingFileError, match=r"the pattern '.*/nowhere/\*\.tar' matches no shard"):
        expand_shards(str(tmp_path / "nowhere" / "*.tar"))
    missing = caption_shards.replace("00004}", "00009}")
    with pytest.raises(MissingFileError, match=r"5 of the 10 shard\(s\) of '.*\{00000\.\.00009\}\.tar' not found: .*00005\.tar"):
        expand_shards([caption_shards, missing])
    with pytest.raises(MissingFileError, match=r"datasets\.webdataset_caption\.build_info\.shards: the pattern"):
        load_dataset("webdataset_caption", {"build_info": {"shards": str(tmp_path / "x-*.tar")}}, context=CONTEXT)
    assert len(expand_shards([caption_shards, caption_shards.replace("{00000..00004}", "0000[12]")])) == 7


def test_counts_come_from_the_tar_headers_or_the_stats_file(tmp_path: Path, caption_shards: str) -> None:
    assert [count_samples(s) for s in expand_shards(caption_shards)] == list(UNEVEN)
    pattern, _ = write_instruction_shards(tmp_path)
    shards = expand_shards(pattern)
    assert [count_samples(s) for s in shards] == [13, 13, 13, 1]
    assert json.loads(Path(shards[0].replace(".tar", "_stats.json")).read_text())["successes"] == 13


def test_one_pass_splits_uneven_shards_into_equal_streams_with_no_sample_twice(caption_shards: str) -> None:
    """2 ranks x 2 workers: 4 streams of 27 // 4 = 6 samples each pass, disjoint; the next pass reorders."""
    stream = raw_stream(caption_shards, shuffle_buffer=4)
    stream.configure(world_size=2, num_workers=2, batch_size=2)
    assert (stream.per_stream, stream.batches_per_stream, stream.batches_per_pass, len(stream)) == (6, 3, 6, 24)
    passes = []
    for epoch in (0, 1):
        keys = [[r.key for r in stream.shuffled_pass(epoch, s)] for s in range(4)]
        assert [len(k) for k in keys] == [6, 6, 6, 6]
        flat = [k for ks in keys for k in ks]
        assert len(set(flat)) == 24  # no sample read by two streams (ranks or workers)
        passes.append(keys)
    assert passes[0] != passes[1]
    # The shuffle buffer is seeded: the same pass reads the same order again.
    assert [r.key for r in stream.shuffled_pass(1, 3)] == passes[1][3]


def test_resampled_streams_draw_with_replacement_a_fixed_count_each(caption_shards: str) -> None:
    stream = raw_stream(caption_shards, resampled=True, samples_per_epoch=40, shuffle_buffer=8)
    assert stream.counts is None  # nothing counted: samples_per_epoch is given
    stream.configure(world_size=2, num_workers=1, batch_size=4)
    assert (stream.per_stream, stream.batches_per_pass) == (20, 5)
    keys = [[r.key for r in stream.shuffled_pass(0, s)] for s in range(2)]
    assert [len(k) for k in keys] == [20, 20]
    assert len(set(keys[0] + keys[1])) < 40  # drawn with replacement: 27 samples exist
    assert keys[0] == [r.key for r in stream.shuffled_pass(0, 0)]
    with pytest.raises(DataError, match=r"samples_per_epoch=99: more than the 27 samples"):
        raw_stream(caption_shards, samples_per_epoch=99)
    with pytest.raises(DataError, match=r"gives each stream 1 sample\(s\), fewer than a batch of 2"):
        raw_stream(caption_shards).configure(world_size=2, num_workers=8, batch_size=2)


@pytest.fixture(scope="module")
def instruction(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return write_instruction_shards(tmp_path_factory.mktemp("instr"))


def _instruction_stream(pattern: str, split: str = "train", **info) -> ShardStream:  # type: ignore[no-untyped-def]
    vis = {"train": {"name": "blip2_image_train", "image_size": 64}, "eval": {"name": "blip_image_eval", "image_size": 64}}
    overrides = {"build_info": {"shards": pattern, **info}, "vis_processor": vis}
    return load_dataset("webdataset_instruction", overrides, context=CONTEXT)["train"]


def test_fast_forward_and_a_rotated_dataloader_continue_the_stream_exactly(instruction: tuple[str, Path]) -> None:
    """Random crops/flips included: batch k after a fast-forward equals batch k of the uninterrupted stream."""
    from torch.utils.data import DataLoader

    stream = _instruction_stream(instruction[0], shuffle_buffer=6)
    stream.configure(num_workers=2, batch_size=3)  # 40 // 2 = 20 samples per worker: 6 batches of 3
    full = DataLoader(stream, batch_size=None, num_workers=2)
    reference = [b for _, b in zip(range(15), full)]  # crosses into the second pass (12 batches per pass)
    for start in (3, 7):  # odd: the next batch is worker 1's, so the workers are rotated
        stream.configure(num_workers=2, batch_size=3, start_batches=start)
        resumed = [b for _, b in zip(range(15 - start), DataLoader(stream, batch_size=None, num_workers=2))]
        for a, b in zip(resumed, reference[start:]):
            assert a["ids"] == b["ids"]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["input_ids"], b["input_ids"])
    assert len({i for b in reference[:12] for i in b["ids"]}) == 36  # one pass: each of 36 used samples once


def test_stream_batches_equal_the_json_datasets_batches(instruction: tuple[str, Path]) -> None:
    """Same records, same processors, same collater: the same tensors (eval processors: no randomness)."""
    pattern, ann = instruction
    from lavislite.processors.blip_processors import build_processor

    stream = load_dataset(
        "webdataset_instruction",
        {"build_info": {"shards": pattern, "shuffle_buffer": 0}, "vis_processor": {"train": {"name": "blip_image_eval", "image_size": 64}}},
        context=CONTEXT,
    )["train"]
    stream.configure(batch_size=4)
    batch = next(stream.stream_batches(0))
    js = InstructionDataset(
        build_processor({"name": "blip_image_eval", "image_size": 64}, context=CONTEXT), stream.text_processor, str(DEMO_DATA / "images"), [str(ann)], parse=parse_llava
    )
    by_id = {s.id: i for i, s in enumerate(js.samples)}
    expected = js.collater([js[by_id[i]] for i in batch["ids"]])
    assert batch["ids"] == expected["ids"] and len(set(batch["ids"])) == 4
    for key in ("input_ids", "attention_mask", "labels", "image"):
        assert torch.equal(batch[key], expected[key]), key
    assert batch["num_images"] == expected["num_images"]


def test_bad_samples_are_skipped_with_their_record_or_stop_the_run_naming_shard_and_key(tmp_path: Path) -> None:
    pattern = write_img2dataset_shards(tmp_path, counts=(4, 4), corrupt={1: "image", 6: "no_image"})
    overrides = {"build_info": {"shards": pattern, "shuffle_buffer": 0}, "vis_processor": {"train": {"name": "blip_image_eval", "image_size": 64}}}
    stream = load_dataset("webdataset_caption", overrides, context=CONTEXT)["train"]
    stream.configure(batch_size=4)
    batches = stream.stream_batches(0)
    pass_0 = [next(batches), next(batches)]  # one pass: the two shards, in the pass's shard order
    assert [len(b["ids"]) for b in pass_0] == [3, 3] and [b["image"].shape[0] for b in pass_0] == [3, 3]
    bad = {r["key"]: r for b in pass_0 for r in b["bad_samples"]}
    assert sorted(bad) == ["000000001", "000010006"]
    assert bad["000000001"]["dataset"] == "webdataset_caption" and bad["000000001"]["source"].endswith("00000.tar")
    assert "cannot decode 000000001.jpg" in bad["000000001"]["reason"]
    assert bad["000010006"]["source"].endswith("00001.tar") and "but 0 image(s)" in bad["000010006"]["reason"]
    strict = load_dataset("webdataset_caption", {**overrides, "on_bad_sample": "error"}, context=CONTEXT)["train"]
    strict.configure(batch_size=4)
    with pytest.raises(DataError, match=r"0000[01]\.tar: sample 0000[01]000[16]: "):
        list(zip(range(2), strict.stream_batches(0)))


def test_the_converter_writes_caption_shards_from_coco_and_prints_the_build_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann = tmp_path / "coco.json"
    ann.write_text(json.dumps([{"image": IMAGES[i].name, "caption": [f"cap {i}a", f"cap {i}b"] if i == 0 else f"cap {i}", "image_id": i} for i in range(5)]))
    assert make_shards_main(["--annotations", str(ann), "--images", str(DEMO_DATA / "images"), "--out", str(tmp_path / "s"), "--samples-per-shard", "4"]) == 0
    out = capsys.readouterr().out
    assert "wrote 6 coco_caption samples in 2 shard(s)" in out
    assert f'webdataset_caption:\n    build_info:\n      shards: "{tmp_path / "s"}/{{00000..00001}}.tar"' in out
    shards = expand_shards(str(tmp_path / "s" / "{00000..00001}.tar"))
    assert [count_samples(s) for s in shards] == [4, 2]
    stream = raw_stream(str(tmp_path / "s" / "*.tar"), shuffle_buffer=0)
    captions = [caption_sample(r, "<image>")[0].turns[1]["content"] for r in stream.shuffled_pass(0, 0)]
    assert sorted(captions) == ["cap 0a", "cap 0b", "cap 1", "cap 2", "cap 3", "cap 4"]
    ann.write_text(json.dumps([{"image": "nope.jpg", "caption": "x", "image_id": 1}]))
    assert make_shards_main(["--annotations", str(ann), "--images", str(DEMO_DATA / "images"), "--out", str(tmp_path / "t")]) == 1
    assert "nope.jpg" in capsys.readouterr().err and not (tmp_path / "t").exists()


@pytest.mark.parametrize("fmt", ["pax", "gnu", "ustar", "gz"])
def test_tar_members_reads_what_tarfile_reads_in_every_format(tmp_path: Path, fmt: str) -> None:
    """The shard reader's own tar parser: PAX headers (Python's default, float mtimes), GNU and PAX long names,
    ustar's prefix field (a 124-character path), gzip, empty and unaligned members: the same names and bytes as
    ``tarfile``, in order."""
    import gzip

    from lavislite.datasets.datasets.wds_dataset import read_shard, tar_members

    members = [(f"{'d' * 120}/{i:03d}.{ext}" if i == 2 else f"dir/{i:03d}.{ext}", bytes(range(i * 37 % 256)) * (i + 1))
               for i in range(5) for ext in ("jpg", "json")]
    members.append(("dir/005.txt", b""))
    buffer = io.BytesIO()
    tar_format = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "ustar": tarfile.USTAR_FORMAT, "gz": tarfile.PAX_FORMAT}[fmt]
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1.5e9 + 0.25  # a float mtime: PAX headers in PAX format
            tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    path = tmp_path / ("shard.tar.gz" if fmt == "gz" else "shard.tar")
    path.write_bytes(gzip.compress(raw) if fmt == "gz" else raw)
    with tarfile.open(path) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]  # type: ignore[union-attr]
    with open(path, "rb") as fh:
        assert list(tar_members(fh)) == expected
    with open(path, "rb") as fh:  # unwanted members are named, not read
        assert list(tar_members(fh, want=lambda name: name.endswith(".json"))) == [(n, d if n.endswith(".json") else None) for n, d in expected]
    assert [s.key for s in read_shard(str(path), start=1, stop=4)] == ["001", "002", "003"]
    assert count_samples(str(path)) == 6


def test_a_corrupt_tar_header_is_an_error_naming_the_shard(tmp_path: Path) -> None:
    from lavislite.datasets.datasets.wds_dataset import ShardError, read_shard

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(3):
            info = tarfile.TarInfo(f"{i:03d}.txt")
            info.size = 700
            tar.addfile(info, io.BytesIO(b"a" * 700))
    raw = bytearray(buffer.getvalue())
    raw[3 * 512 + 10] ^= 0xFF  # the second member's header, after the first's header and its 2 data blocks
    (tmp_path / "bad.tar").write_bytes(bytes(raw))
    with pytest.raises(ShardError, match=r"bad.tar: cannot read the tar shard near sample 0: bad tar header checksum"):
        list(read_shard(str(tmp_path / "bad.tar")))
