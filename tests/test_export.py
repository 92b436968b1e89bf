"""Weights out: release folders, export to a plain transformers model, and back.

One module fixture builds two demo-size models with random weights (no
training is needed for token equality): the demo model with every part
trainable, and one with LoRA on a frozen Qwen base saved as a local folder (as
``llm_model`` names a real checkpoint). Each writes a release; the first is
exported with ``python -m lavislite.export`` (in-process), the second merged
and as base + adapter.

The transformers side runs in a fresh ``python -I -S`` in which
``import lavislite`` fails: ``-I`` drops PYTHONPATH, the current folder and the
user site; ``-S`` skips ``site``, so the venv's ``.pth`` files (among them the
editable install's finder of the main checkout) never run. The harness adds
only the site-packages folders to ``sys.path`` (plain folders: no ``.pth``
processing) and asserts ``find_spec("lavislite") is None`` before importing
anything else. It runs the README's snippets and writes what it got
(ids, pixels, greedy tokens, logits) to a safetensors file; this side compares
them with lavislite's own processors and model. It starts once the exports
exist and runs beside the in-process tests, which come first in this file.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image

from conftest import DEMO, REPO

IM_END, ENDOFTEXT, IMAGE_PAD = 151645, 151643, 151655
SHARD = "3MB"  # the demo model is ~40 MB in fp32: several shards
NEW_TOKENS = 8
LORA = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}

# The README's message, and a batch of two of different lengths (images in the
# middle of the text too), each with its image file.
README_IMAGE = "image.png"
BATCH = [
    ([{"type": "image"}, {"type": "text", "text": " What shape is this?"}], "red.png"),
    ([{"type": "text", "text": "Describe "}, {"type": "image"}, {"type": "text", "text": " in detail,\nplease. "}], "noise.png"),
]


# -- helpers -------------------------------------------------------------------------------
def randomise(named: Iterable[tuple[str, torch.nn.Parameter]], seed: int) -> None:
    """Deterministic weights with unit-scale activations (LayerNorm weights near 1, lora_B non-zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in named:
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
            elif "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def readme_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return text.split("## Leaving lavislite: export to transformers", 1)[1].split("\n## ", 1)[0]


def readme_snippet(name: str) -> str:
    found = re.findall(rf"<!-- snippet: {name} -->\n```python\n(.*?)```", readme_section(), flags=re.S)
    assert len(found) == 1, f"README snippet {name}"
    return found[0]


def lavislite_batch(model: Any, txt: Any, vis: Any, images: Path, items: list[tuple[list[dict[str, Any]], str]]) -> dict[str, Any]:
    """lavislite's inference batch: chat processor, eval image processor, left padding."""
    from lavislite.datasets.datasets.instruction_dataset import collate_chat

    rows = []
    for i, (content, image) in enumerate(items):
        enc = txt([{"role": "user", "content": content}], num_images=1, sample_id=str(i), add_generation_prompt=True)
        with Image.open(images / image) as im:
            pixels = vis(im)
        rows.append({"id": str(i), "image": pixels[None], "input_ids": torch.tensor(enc["input_ids"]), "labels": torch.tensor(enc["labels"])})
    return collate_chat(rows, pad_token_id=int(model.tokenizer.pad_token_id), padding_side="left")


@torch.no_grad()
def greedy_ids(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """lavislite's greedy tokens: the model's embedding path + the LLM's own generate (as Blip2Qwen.generate runs it)."""
    return model.llm.generate(
        inputs_embeds=model.embed(batch),
        attention_mask=batch["attention_mask"],
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=ENDOFTEXT,
        eos_token_id=IM_END,
    )


@torch.no_grad()
def logits(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    return model.llm(inputs_embeds=model.embed(batch), attention_mask=batch["attention_mask"]).logits


# The transformers side, run with `python -I -S`. Everything it computes goes to out.safetensors.
HARNESS = r'''
import importlib.util, json, sys
spec = json.load(open(sys.argv[1], encoding="utf-8"))
sys.path[:0] = spec["site"]  # plain folders: their .pth files (editable installs) are not run
assert sys.flags.isolated and sys.flags.no_site
assert importlib.util.find_spec("lavislite") is None, "lavislite is importable"

import os
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import Blip2ForConditionalGeneration

torch.manual_seed(0)
out, text = {}, {}
os.chdir(spec["cwd"])

# 1. The README snippet, as written ("exported" is the plain model's export).
ns = {}
exec(spec["readme"], ns)
out["readme.input_ids"] = ns["inputs"]["input_ids"]
out["readme.pixel_values"] = ns["pixel_values"]
out["readme.output"] = ns["output"]
text["readme.reply"] = ns["reply"]

# Every export carries the same tokenizer and image processor files (the
# parent checks): load them once, a Qwen tokenizer takes seconds.
tokenizer, image_processor = ns["tokenizer"], ns["image_processor"]

# 2. The batch, on each export: plain, LoRA merged, LoRA base + adapter (README's adapter snippet).
for name, folder, adapter in spec["exports"]:
    model = Blip2ForConditionalGeneration.from_pretrained(folder).eval()
    if adapter:
        ns = {"model": model, "folder": folder}
        exec(spec["adapter"], ns)
        model = ns["model"]
        assert type(model.language_model).__name__ == "PeftModelForCausalLM"
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True, tokenize=False) for c, _ in spec["batch"]]
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    pixels = image_processor([Image.open(f) for _, f in spec["batch"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        gen = model.generate(pixel_values=pixels, **enc, do_sample=False, max_new_tokens=spec["new_tokens"])
        out[f"{name}.logits"] = model(pixel_values=pixels, **enc).logits
    out[f"{name}.input_ids"] = enc["input_ids"]
    out[f"{name}.attention_mask"] = enc["attention_mask"]
    out[f"{name}.pixel_values"] = pixels
    out[f"{name}.new_tokens"] = gen[:, enc["input_ids"].shape[1]:]
    text[f"{name}.replies"] = [r.strip() for r in tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
    text[f"{name}.layer_norm_eps"] = model.config.vision_config.layer_norm_eps
    text[f"{name}.image_token_index"] = model.config.image_token_index

assert "lavislite" not in sys.modules
save_file({k: v.contiguous() for k, v in out.items()}, "out.safetensors")
json.dump(text, open("out.json", "w", encoding="utf-8"))
'''


class TransformersSide:
    """HARNESS running in a Python that has the venv's packages but cannot import lavislite.

    It starts as soon as the exports exist and runs beside the in-process tests
    (on its own core); the tests that compare with it wait for it.
    """

    def __init__(self, cwd: Path, spec: dict[str, Any]) -> None:
        paths = sysconfig.get_paths()
        site = sorted({paths["purelib"], paths["platlib"]})
        (cwd / "harness.py").write_text(HARNESS, encoding="utf-8")
        (cwd / "spec.json").write_text(json.dumps({**spec, "site": site, "cwd": str(cwd)}), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
        self.cwd = cwd
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(cwd / "harness.py"), str(cwd / "spec.json")],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._results: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None

    def results(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, text) the harness wrote; waits for it the first time."""
        if self._results is None:
            from safetensors.torch import load_file

            _, stderr = self.proc.communicate(timeout=300)
            assert self.proc.returncode == 0, stderr[-4000:]
            self._results = load_file(self.cwd / "out.safetensors"), json.loads((self.cwd / "out.json").read_text(encoding="utf-8"))
        return self._results

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


# -- the fixture ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, Qwen2Config

    from lavislite.common.config import Config
    from lavislite.export import main as export_main
    from lavislite.models import load_preprocess
    from lavislite.models.blip2_qwen import Blip2Qwen
    from lavislite.models.hf_export import export_hf
    from lavislite.models.release import write_release

    root = tmp_path_factory.mktemp("weights_out")
    hf_side = root / "hf_side"  # the transformers side's working folder
    hf_side.mkdir()
    Image.new("RGB", (40, 30), (220, 20, 20)).save(hf_side / "red.png")
    Image.effect_noise((50, 70), 60).convert("RGB").save(hf_side / "noise.png")
    Image.radial_gradient("L").convert("RGB").resize((90, 60)).save(hf_side / README_IMAGE)

    # The demo model, every part trainable (no frozen pretrained ViT): its release holds every weight.
    run = Config(DEMO, options=["model.freeze_vit=false", "model.load_pretrained=false"])
    plain = Blip2Qwen.from_config(run.model_cfg).eval()
    randomise(plain.named_parameters(), seed=1)
    run_config = OmegaConf.to_container(run.config, resolve=True)
    run_config["model"] = dataclasses.asdict(plain.cfg)
    write_release(str(root / "run" / "release"), plain.trainable_state_dict(), run_config, metadata={"global_step": "7"})
    assert export_main(["--checkpoint", str(root / "run"), "--out", str(hf_side / "exported"), "--max-shard-size", SHARD]) == 0

    # LoRA on a frozen Qwen base read from a local folder (what llm_model names in real runs).
    base = AutoModelForCausalLM.from_config(Qwen2Config(**OmegaConf.to_container(run.model_cfg.llm_config)))
    randomise(base.named_parameters(), seed=2)
    base.save_pretrained(root / "qwen_base")
    lora_run = Config(DEMO, options=[f"model.llm_model={root / 'qwen_base'}", "model.llm_init=pretrained", "model.freeze_llm=true", *[f"model.lora.{k}={v}" for k, v in LORA.items() if k != "target_modules"], "model.lora.target_modules=[q_proj,v_proj,down_proj]"])
    lora = Blip2Qwen.from_config(lora_run.model_cfg).eval()
    randomise([(n, p) for n, p in lora.named_parameters() if p.requires_grad], seed=3)
    write_release(str(root / "lora_run" / "release"), lora.trainable_state_dict(), lora_run.config)
    export_hf(lora, str(hf_side / "exported_merged"), merge_lora=True, max_shard_size=SHARD)
    export_hf(lora, str(hf_side / "exported_adapter"), merge_lora=False, max_shard_size=SHARD)

    side = TransformersSide(
        hf_side,
        {
            "readme": readme_snippet("export-usage"),
            "adapter": readme_snippet("export-adapter"),
            "batch": [[c, f] for c, f in BATCH],
            "new_tokens": NEW_TOKENS,
            "exports": [["plain", "exported", False], ["merged", "exported_merged", False], ["adapter", "exported_adapter", True]],
        },
    )
    vis, txt = load_preprocess(run.model_cfg, Blip2Qwen.processor_context(run.model_cfg))
    try:
        yield SimpleNamespace(root=root, hf_side=hf_side, plain=plain, lora=lora, vis=vis["eval"], txt=txt["eval"], transformers=side)
    finally:
        side.close()


# -- in lavislite: folders, the round trip, LoRA through PEFT, loaders (these run while the harness works) --
def test_export_folder_layout(world: SimpleNamespace) -> None:
    folder = world.hf_side / "exported"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((folder / s).exists() for s in shards)
    keys = set(index["weight_map"])
    assert {"query_tokens", "language_projection.weight", "vision_model.post_layernorm.weight", "language_model.model.embed_tokens.weight"} <= keys
    assert "language_model.lm_head.weight" not in keys  # tied to the embedding, stored once
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Blip2ForConditionalGeneration"]
    assert config["num_query_tokens"] == world.plain.cfg.qformer.num_query_token
    # A reply ends at <|im_end|> or <|endoftext|>, as in lavislite's generate and Qwen's own generation config.
    assert config["text_config"]["model_type"] == "qwen2" and config["text_config"]["eos_token_id"] == [IM_END, ENDOFTEXT]
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [IM_END, ENDOFTEXT] and generation["pad_token_id"] == ENDOFTEXT
    image = json.loads((folder / "preprocessor_config.json").read_text())
    assert image["size"] == {"height": 64, "width": 64} and image["resample"] == 3 and image["do_rescale"] and image["do_normalize"]
    assert json.loads((folder / "processor_config.json").read_text())["num_query_tokens"] is None
    assert not (folder / "adapter").exists()
    assert not [p for p in world.hf_side.iterdir() if p.name.startswith(".")]  # no temporary folders left
    # The harness loads the tokenizer and image processor once, for all three exports.
    for other in ("exported_merged", "exported_adapter"):
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json", "processor_config.json"):
            assert (world.hf_side / other / name).read_bytes() == (folder / name).read_bytes(), (other, name)


def test_release_folder_contents(world: SimpleNamespace) -> None:
    import yaml
    from safetensors import safe_open

    release = world.root / "run" / "release"
    assert sorted(p.name for p in release.iterdir()) == ["config.yaml", "model.safetensors"]  # no LoRA: no adapter
    cfg = yaml.safe_load((release / "config.yaml").read_text())
    assert set(cfg) == {"model", "datasets", "run"} and cfg["model"]["arch"] == "blip2_qwen"
    with safe_open(str(release / "model.safetensors"), "pt") as fh:
        assert fh.metadata()["global_step"] == "7"
        assert sorted(fh.keys()) == sorted(world.plain.trainable_state_dict())
    lora_release = world.root / "lora_run" / "release"
    assert sorted(p.name for p in lora_release.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "config.yaml", "model.safetensors"]


def test_release_adapter_loads_with_peft_onto_the_base_llm(world: SimpleNamespace) -> None:
    """PeftModel.from_pretrained(plain Qwen, release folder) gives lavislite's LLM logits (fp32, atol 1e-5)."""
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    release = world.root / "lora_run" / "release"
    with safe_open(str(release / "adapter_model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    assert keys and all(k.startswith("base_model.model.model.layers.") and ".default." not in k for k in keys)
    cfg = json.loads((release / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(world.root / "qwen_base") and sorted(cfg["target_modules"]) == sorted(LORA["target_modules"])
    assert cfg["peft_type"] == "LORA" and cfg["lora_dropout"] == 0.0

    ids = torch.tensor([[IM_END - 1, 872, 198, 9707, 1879, 0, IM_END, 198, IM_END - 1, 77091, 198]])
    base = AutoModelForCausalLM.from_pretrained(world.root / "qwen_base").eval()
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        peft_model = PeftModel.from_pretrained(base, str(release)).eval()
        theirs = peft_model(input_ids=ids).logits
        ours = world.lora.llm(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert (base_logits - ours).abs().max() > 0.1  # non-zero lora_B: the adapter changes the output


def test_round_trip_into_lavislite_is_exact(world: SimpleNamespace) -> None:
    """Export -> lavislite (a fresh model, finetuned=<export>): every weight and the logits are identical."""
    from lavislite.common.config import Config
    from lavislite.models.blip2_qwen import Blip2Qwen

    torch.manual_seed(123)  # a different random start: the load must overwrite everything
    cfg = Config(DEMO, options=[f"model.finetuned={world.hf_side / 'exported'}"]).model_cfg
    back = Blip2Qwen.from_config(cfg).eval()
    report = back.load_reports[-1]
    assert report.format == "hf_blip2" and report.unused == {} and report.missing == []
    assert report.parts == ["vit", "ln_vision", "qformer", "queries", "proj", "llm"]
    original = world.plain.state_dict()
    for key, value in back.state_dict().items():
        assert torch.equal(value, original[key]), key
    batch = lavislite_batch(world.plain, world.txt, world.vis, world.hf_side, BATCH)
    assert torch.equal(logits(back, batch), logits(world.plain, batch))


def test_load_from_checkpoint_reads_run_release_and_both_lora_exports(world: SimpleNamespace) -> None:
    """load_from_checkpoint rebuilds the same model from a run folder, a release and an export (adapter included)."""
    from lavislite.models.release import load_from_checkpoint

    batch = lavislite_batch(world.lora, world.txt, world.vis, world.hf_side, BATCH)
    expected = logits(world.lora, batch)
    for source in (world.root / "lora_run", world.hf_side / "exported_adapter"):
        model, vis, txt = load_from_checkpoint(str(source))
        assert model.cfg.lora.enabled and not model.training
        assert torch.equal(logits(model, batch), expected), source
        assert set(vis) == {"train", "eval"} and txt["eval"].cfg.num_image_tokens == model.cfg.qformer.num_query_token
    merged, _, _ = load_from_checkpoint(str(world.hf_side / "exported_merged"))
    assert not merged.cfg.lora.enabled
    torch.testing.assert_close(logits(merged, batch), expected, atol=1e-4, rtol=0)  # merging rounds


def test_hf_loader_sets_aside_an_llm_that_does_not_fit(world: SimpleNamespace) -> None:
    """An export of another LLM size: vision, Q-Former and queries load; LLM and projection are another LLM's."""
    from lavislite.models.blip2_qwen import Blip2Qwen
    from lavislite.models.checkpoint import OTHER_LLM

    cfg = dataclasses.asdict(world.plain.cfg)
    cfg["llm_config"] = {**cfg["llm_config"], "hidden_size": 32, "intermediate_size": 64}
    cfg.update(load_pretrained=True, vit_pretrained="", pretrained=str(world.hf_side / "exported"))
    other = Blip2Qwen.from_config(cfg)
    report = other.load_reports[-1]
    assert report.parts == ["vit", "ln_vision", "qformer", "queries"]
    assert report.unused and set(report.unused.values()) == {OTHER_LLM}
    assert {k.split(".")[0] for k in report.unused} == {"language_model", "language_projection"}
    with pytest.raises(ValueError, match="its language model does not fit this model's LLM"):
        Blip2Qwen.from_config({**cfg, "pretrained": "", "finetuned": str(world.hf_side / "exported")})


def test_untied_llm_exports_its_own_lm_head(tmp_path: Path) -> None:
    """A Qwen with untied embeddings (Qwen2.5-7B's layout): lm_head goes out as its own tensor; logits match."""
    from transformers import Blip2ForConditionalGeneration

    from lavislite.models.blip2_qwen import Blip2Qwen
    from lavislite.models.hf_export import export_hf

    cfg = {
        "vision": {"image_size": 28, "patch_size": 14, "hidden_size": 32, "num_layers": 1, "num_heads": 4, "intermediate_size": 64, "ln_vision_eps": 1e-6},
        "qformer": {"num_query_token": 3, "hidden_size": 32, "num_layers": 1, "num_heads": 4, "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 16},
        "llm_model": "qwen2", "llm_init": "random", "tokenizer": "builtin:qwen2.5",
        "llm_config": {"vocab_size": 151936, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": False},
    }
    model = Blip2Qwen.from_config(cfg).eval()
    randomise(model.named_parameters(), seed=8)
    assert not torch.equal(model.llm.lm_head.weight, model.llm.model.embed_tokens.weight)
    export_hf(model, str(tmp_path / "untied"))
    hf = Blip2ForConditionalGeneration.from_pretrained(tmp_path / "untied").eval()
    assert torch.equal(hf.language_model.lm_head.weight, model.llm.lm_head.weight)
    assert torch.equal(hf.language_model.model.embed_tokens.weight, model.llm.model.embed_tokens.weight)
    ids = torch.tensor([[151644, 872, 198, 151652, *[IMAGE_PAD] * 3, 151653, 9707, 151645, 198, 151644, 77091, 198]])
    image = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "image": image}
    with torch.no_grad():
        theirs = hf(pixel_values=image, input_ids=ids).logits
    # ln_vision_eps 1e-6 here, as the export has it: the outputs agree to float rounding.
    torch.testing.assert_close(theirs, logits(model, batch), atol=1e-6, rtol=0)


def test_resolve_checkpoint_forms_and_errors(world: SimpleNamespace, tmp_path: Path) -> None:
    from lavislite.models.release import resolve_checkpoint

    run, release, export = world.root / "run", world.root / "run" / "release", world.hf_side / "exported"
    assert resolve_checkpoint(str(run)) == str(release)
    assert resolve_checkpoint(str(release)) == str(release)
    assert resolve_checkpoint(str(export)) == str(export)
    old_run = tmp_path / "old_run"
    old_run.mkdir()
    (old_run / "checkpoint_release.pth").write_bytes(b"")
    assert resolve_checkpoint(str(old_run)) == str(old_run / "checkpoint_release.pth")
    with pytest.raises(FileNotFoundError, match=r"no lavislite checkpoint at .*empty.*release/model.safetensors.*checkpoint_release.pth.*config.json"):
        (tmp_path / "empty").mkdir()
        resolve_checkpoint(str(tmp_path / "empty"))


def test_legacy_pth_release_loads_with_its_stored_config(tmp_path: Path) -> None:
    """An older checkpoint_release.pth ({"model", "config"}) loads through load_from_checkpoint (weights_only)."""
    from lavislite.models.blip2_qwen import Blip2Qwen
    from lavislite.models.release import load_from_checkpoint

    model_cfg = {
        "arch": "blip2_qwen", "model_type": "demo",
        "vision": {"image_size": 28, "patch_size": 14, "hidden_size": 32, "num_layers": 1, "num_heads": 4, "intermediate_size": 64},
        "qformer": {"num_query_token": 4, "hidden_size": 32, "num_layers": 1, "num_heads": 4, "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 16},
        "llm_config": {"vocab_size": 151936, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1},
        "llm_model": "qwen2", "llm_init": "random", "tokenizer": "builtin:qwen2.5",
        "freeze_llm": True, "freeze_vit": True, "freeze_qformer": False,
    }
    torch.manual_seed(4)
    trained = Blip2Qwen.from_config(model_cfg)
    randomise([(n, p) for n, p in trained.named_parameters() if p.requires_grad], seed=5)
    torch.save({"model": trained.trainable_state_dict(), "config": {"model": model_cfg, "datasets": {}, "run": {}}}, tmp_path / "checkpoint_release.pth")
    torch.manual_seed(6)
    model, _, _ = load_from_checkpoint(str(tmp_path))
    assert model.load_reports[-1].format == "lavislite"
    for name, p in trained.named_parameters():
        if p.requires_grad:
            assert torch.equal(dict(model.named_parameters())[name], p), name


def test_write_release_is_atomic_and_refuses_foreign_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lavislite.models import release as rel

    small = {"proj.weight": torch.ones(2, 2), "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight": torch.ones(1, 2)}
    cfg = {"model": {"llm_model": "qwen2", "lora": {**LORA}}, "datasets": {}, "run": {}}
    out = tmp_path / "release"
    rel.write_release(str(out), small, cfg)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(rel, "write_adapter", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        rel.write_release(str(out), {k: v * 2 for k, v in small.items()}, cfg)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous release, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]  # no temporary folder left
    monkeypatch.undo()

    foreign = tmp_path / "my_notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        rel.write_release(str(foreign), small, cfg)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="no 'model' section"):
        rel.write_release(str(tmp_path / "x"), small, {"run": {}})
    with pytest.raises(ValueError, match="hold no LoRA weight"):
        rel.write_release(str(tmp_path / "x"), {"proj.weight": torch.ones(1)}, cfg)


def test_no_pickle_loading_anywhere() -> None:
    """No ``weights_only=False`` in lavislite/, train.py, evaluate.py, and every torch.load says ``weights_only=True``."""
    files = [*sorted((REPO / "lavislite").rglob("*.py")), REPO / "train.py", REPO / "evaluate.py"]
    offenders = []
    for path in files:
        source = path.read_text(encoding="utf-8")
        if "weights_only=False" in source:
            offenders.append(f"{path}: weights_only=False")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" and getattr(node.func.value, "id", None) == "torch":
                if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True for k in node.keywords):
                    offenders.append(f"{path}:{node.lineno}: torch.load without weights_only=True")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                if any(n in ("pickle", "dill", "cloudpickle") for n in names):
                    offenders.append(f"{path}:{node.lineno}: imports a pickler")
    assert offenders == []
    assert len(files) > 20


# -- in plain transformers (the harness): same ids, pixels, greedy tokens --------------------------------------
def test_readme_snippet_in_plain_transformers_matches_lavislite(world: SimpleNamespace) -> None:
    """The README snippet (no lavislite importable) gets lavislite's ids, pixels and greedy reply."""
    # The README's own message, read from the snippet.
    messages = ast.literal_eval(re.search(r"^messages = (\[.*\])$", readme_snippet("export-usage"), flags=re.M).group(1))  # type: ignore[union-attr]
    assert len(messages) == 1 and messages[0]["role"] == "user"
    content = messages[0]["content"]
    assert {"type": "image"} in content
    batch = lavislite_batch(world.plain, world.txt, world.vis, world.hf_side, [(content, README_IMAGE)])
    hf, hf_text = world.transformers.results()
    assert hf["readme.input_ids"].tolist() == batch["input_ids"].tolist()
    assert hf["readme.input_ids"][0].tolist().count(IMAGE_PAD) == world.plain.cfg.qformer.num_query_token
    torch.testing.assert_close(hf["readme.pixel_values"], batch["image"], atol=1e-6, rtol=0)
    prompt_len = batch["input_ids"].shape[1]
    assert torch.equal(hf["readme.output"][:, :prompt_len], batch["input_ids"])  # generate echoes the prompt
    ours = greedy_ids(world.plain, batch)
    assert hf["readme.output"][:, prompt_len:].tolist() == ours.tolist()
    assert hf_text["readme.reply"] == world.plain.tokenizer.decode(ours[0], skip_special_tokens=True)


def test_plain_export_batch_matches_lavislite(world: SimpleNamespace) -> None:
    """Left-padded batch: ids and masks, pixels (atol 1e-6), greedy tokens, model.generate's text; logits within the eps difference."""
    batch = lavislite_batch(world.plain, world.txt, world.vis, world.hf_side, BATCH)
    hf, hf_text = world.transformers.results()
    assert hf["plain.input_ids"].tolist() == batch["input_ids"].tolist()
    assert hf["plain.attention_mask"].tolist() == batch["attention_mask"].tolist()
    assert batch["attention_mask"][:, 0].tolist() == [0, 1]  # really left-padded: the first prompt is shorter
    torch.testing.assert_close(hf["plain.pixel_values"], batch["image"], atol=1e-6, rtol=0)
    ours = greedy_ids(world.plain, batch)
    assert hf["plain.new_tokens"].tolist() == ours.tolist()
    assert hf_text["plain.replies"] == world.plain.generate(batch, max_new_tokens=NEW_TOKENS)
    assert hf_text["plain.image_token_index"] == IMAGE_PAD

    # Logits: the only difference is ln_vision's eps (1e-5 in lavislite, 1e-6 in the export).
    ours_logits = logits(world.plain, batch)
    real = batch["attention_mask"].bool()
    diff = (hf["plain.logits"] - ours_logits)[real].abs().max().item()
    assert world.plain.vision.post_layernorm.eps == 1e-5 and hf_text["plain.layer_norm_eps"] == 1e-6
    assert 0 < diff < 1e-4, diff
    world.plain.vision.post_layernorm.eps = 1e-6
    try:
        matched = logits(world.plain, batch)
    finally:
        world.plain.vision.post_layernorm.eps = 1e-5
    torch.testing.assert_close(hf["plain.logits"][real], matched[real], atol=1e-6, rtol=0)


def test_lora_merged_export_and_base_plus_adapter_match_lavislite(world: SimpleNamespace) -> None:
    """Greedy tokens of the merged export and of base + PEFT adapter equal the unmerged lavislite model's."""
    hf, _ = world.transformers.results()
    batch = lavislite_batch(world.lora, world.txt, world.vis, world.hf_side, BATCH)
    ours = greedy_ids(world.lora, batch).tolist()
    assert hf["merged.new_tokens"].tolist() == ours
    assert hf["adapter.new_tokens"].tolist() == ours
    # The adapter matters: the base LLM alone answers differently.
    real = batch["attention_mask"].bool()
    ours_logits = logits(world.lora, batch)
    for name in ("merged", "adapter"):
        # W + BA merged once rounds differently from W x + B(A x); the gap grows with the logit's size
        # and with the CPU's kernels (AVX2 vs AVX-512 reorder the sums), hence a relative bound.
        torch.testing.assert_close(hf[f"{name}.logits"][real], ours_logits[real], atol=1e-4, rtol=1e-4)
    adapter_cfg = json.loads((world.hf_side / "exported_adapter" / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == LORA["r"] and adapter_cfg["lora_alpha"] == LORA["alpha"] and adapter_cfg["task_type"] == "CAUSAL_LM"
    assert not (world.hf_side / "exported_merged" / "adapter").exists()
