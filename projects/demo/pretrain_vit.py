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
``model.freeze_vit: true``. The head is thrown away. Usage::

    python projects/demo/pretrain_vit.py [--data-dir DIR] [--steps 1500]
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


def pretrain(data_dir: Path, out: Path, steps: int, seed: int, batch_size: int = 64, lr: float = 1e-3) -> None:
    from safetensors.torch import save_file

    from lavislite.models import load_model
    from lavislite.processors.blip_processors import build_processor

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    vision = load_model("blip2_qwen", "demo").vision  # the demo's encoder, with its key names and sizes
    meta = json.loads((data_dir / "metadata.json").read_text())
    train = [m for m in meta if m["split"] == "train"]
    held_out = [m for m in meta if m["split"] != "train"]
    processor = build_processor({"name": "blip_image_eval", "image_size": vision.config.image_size}, {})

    def pixels(items: list[dict]) -> torch.Tensor:
        return torch.stack([processor(Image.open(data_dir / "images" / m["file"]).convert("RGB")) for m in items])

    x_train = pixels(train)
    y_train = {a: labels(train, a) for a in ATTRIBUTES}
    sizes = [len(v) for v in ATTRIBUTES.values()]
    head = nn.Linear(vision.config.hidden_size, sum(sizes))
    optimizer = torch.optim.AdamW([*vision.parameters(), *head.parameters()], lr=lr)
    generator = torch.Generator().manual_seed(seed)

    def logits(x: torch.Tensor) -> list[torch.Tensor]:
        return list(head(vision(pixel_values=x).last_hidden_state.mean(1)).split(sizes, dim=-1))

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
    print(f"pretrained the demo ViT: {steps} steps in {time.time() - start:.1f} s; linear-head accuracy: {'; '.join(report)}")

    weights = {f"vision.{k}": v.detach().clone().contiguous() for k, v in vision.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out), metadata={"what": "lavislite demo ViT, supervised on the demo training images", "steps": str(steps), "seed": str(seed)})
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=HERE / "data")
    parser.add_argument("--out", type=Path, default=None, help="default: DATA_DIR/vit_pretrained.safetensors")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pretrain(args.data_dir, args.out or args.data_dir / "vit_pretrained.safetensors", args.steps, args.seed)


if __name__ == "__main__":
    main()
