"""Pretrains the demo's tiny vision encoder, which the demo then keeps frozen (as BLIP-2 does).

BLIP-2 instruction tuning starts from a *pretrained, frozen* ViT (EVA-CLIP in
LAVIS). The offline demo cannot download one, and a randomly initialised ViT
does not do: trained end to end from random weights on the demo data, the
Q-Former learns the colour within a hundred steps and then keeps only colour,
so the model answers every "What shape is in the image?" with the same word.

This script gives the demo its pretrained encoder the way many ViTs are made:
supervised classification (shape, colour, size; size weighs 4x, see
``LOSS_WEIGHT``) of the **training images only** (held-out images are never
seen), a linear head on the mean of the patch features, a few seconds on a CPU. It writes the encoder's weights
(``vision.*``, lavislite's key names) to ``data/vit_pretrained.safetensors``,
which ``projects/demo/train.yaml`` names as ``model.vit_pretrained`` with
``model.freeze_vit: true``. The head is thrown away. ``--arch llava`` pretrains
the llava demo's timm tower the same way (on the mean of its patch tokens) and
writes a timm checkpoint (timm's key names) to
``projects/llava/data/tower_pretrained.safetensors``, which
``projects/llava/demo.yaml`` names as ``model.vision.pretrained``. Usage::

    python projects/demo/pretrain_vit.py [--arch blip2_qwen|llava] [--data-dir DIR] [--steps 1500]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn

ATTRIBUTES = {
    "shape": ("circle", "square", "triangle"),
    "colour": ("red", "green", "blue", "yellow"),
    "size": ("small", "large"),
}
HERE = Path(__file__).resolve().parent
# Size weighs 4x: with equal weights the encoder's features carry size with about half the
# variance of shape (0.20 vs 0.40 of it), and the Q-Former, trained on far more shape and colour
# tokens, dropped it (0.001 of its output's variance) before the LLM had learnt to read it.
# With 4x the three attributes have about equal shares (0.32-0.34).
LOSS_WEIGHT = {"shape": 1.0, "colour": 1.0, "size": 4.0}


def labels(items: list[dict], attribute: str) -> torch.Tensor:
    return torch.tensor([ATTRIBUTES[attribute].index(m[attribute]) for m in items])


# Where each arch's pretrained encoder goes, and the key prefix its file uses.
OUTPUTS = {"blip2_qwen": (HERE / "data" / "vit_pretrained.safetensors", "vision."), "llava": (HERE.parent / "llava" / "data" / "tower_pretrained.safetensors", "")}


def pretrain(data_dir: Path, out: Path, steps: int, seed: int, batch_size: int = 64, lr: float = 1e-3, arch: str = "blip2_qwen") -> None:
    from safetensors.torch import save_file

    from lavislite.models import load_model
    from lavislite.processors.blip_processors import build_processor

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    vision = load_model(arch, "demo").vision  # the demo's encoder, with its key names and sizes
    if arch == "llava":  # a timm ViT: its patch tokens after the last block
        width, image_size = vision.embed_dim, vision.patch_embed.img_size[0]
        features = lambda x: vision.forward_features(x)[:, vision.num_prefix_tokens :]  # noqa: E731
    else:
        width, image_size = vision.config.hidden_size, vision.config.image_size
        features = lambda x: vision(pixel_values=x).last_hidden_state  # noqa: E731
    meta = json.loads((data_dir / "metadata.json").read_text())
    train = [m for m in meta if m["split"] == "train"]
    held_out = [m for m in meta if m["split"] != "train"]
    processor = build_processor({"name": "blip_image_eval", "image_size": image_size}, {})

    def pixels(items: list[dict]) -> torch.Tensor:
        return torch.stack([processor(Image.open(data_dir / "images" / m["file"]).convert("RGB")) for m in items])

    x_train = pixels(train)
    y_train = {a: labels(train, a) for a in ATTRIBUTES}
    sizes = [len(v) for v in ATTRIBUTES.values()]
    head = nn.Linear(width, sum(sizes))
    optimizer = torch.optim.AdamW([*vision.parameters(), *head.parameters()], lr=lr)
    generator = torch.Generator().manual_seed(seed)

    def logits(x: torch.Tensor) -> list[torch.Tensor]:
        return list(head(features(x).mean(1)).split(sizes, dim=-1))

    start = time.time()
    vision.train()
    for _ in range(steps):
        idx = torch.randint(0, len(train), (batch_size,), generator=generator)
        loss = sum(LOSS_WEIGHT[a] * nn.functional.cross_entropy(out, y_train[a][idx]) for out, a in zip(logits(x_train[idx]), ATTRIBUTES))
        optimizer.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()
    vision.eval()
    with torch.no_grad():
        report = []
        for name, items in (("train", train), ("held-out", held_out)):
            outs = logits(pixels(items))
            accs = {a: (o.argmax(-1) == labels(items, a)).float().mean().item() for o, a in zip(outs, ATTRIBUTES)}
            report.append(f"{name} " + " ".join(f"{a} {v:.2f}" for a, v in accs.items()))
    print(f"pretrained the {arch} demo ViT: {steps} steps in {time.time() - start:.1f} s; linear-head accuracy: {'; '.join(report)}")

    prefix = OUTPUTS[arch][1]
    weights = {f"{prefix}{k}": v.detach().clone().contiguous() for k, v in vision.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out), metadata={"what": "lavislite demo ViT, supervised on the demo training images", "steps": str(steps), "seed": str(seed)})
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=HERE / "data")
    parser.add_argument("--arch", choices=sorted(OUTPUTS), default="blip2_qwen", help="whose demo encoder (default blip2_qwen)")
    parser.add_argument("--out", type=Path, default=None, help="default: data/vit_pretrained.safetensors (llava: projects/llava/data/tower_pretrained.safetensors)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pretrain(args.data_dir, args.out or OUTPUTS[args.arch][0], args.steps, args.seed, arch=args.arch)


if __name__ == "__main__":
    main()
