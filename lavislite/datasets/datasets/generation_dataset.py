"""Evaluation datasets whose samples are a prompt to answer, with the references to score the answer.

A sample renders as a user turn (image placeholders + the prompt) and an open
assistant turn (``add_generation_prompt``); the collater pads on the left, so
every row's prompt ends where generation starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from lavislite.datasets.bad_samples import BadSamplePolicy, BadSampleRecord, BuildProblems
from lavislite.datasets.datasets.instruction_dataset import check_images_exist, load_image_tensor
from lavislite.processors.chat_processor import SampleError, kept_images
from lavislite.processors.collate import collate_chat, text_fields


@dataclass
class PromptSample:
    """One evaluation item: its id, image files, the user's prompt, the references and extra fields for the metric.

    ``where`` locates its record (``file[index]``), for messages.
    """

    id: Any
    images: list[str]
    prompt: str
    references: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    where: str = ""


def require_unique_ids(samples: list[PromptSample], ann_paths: list[str]) -> None:
    """Refuses an evaluation set in which two records share an id.

    Results are gathered and scored by id (a VQA question id, a COCO image
    id), so a repeated id would score one answer twice or lose one.

    Raises:
        SampleError: naming the id and both records (file and index of each).
    """
    first: dict[str, PromptSample] = {}
    for s in samples:
        key = str(s.id)
        if key in first:
            a, b = first[key].where, s.where
            where = f"{a} and {b}" if a and b else f"two records of {', '.join(ann_paths)}"
            raise SampleError(f"duplicate id {s.id!r}: {where}; evaluation results are keyed by id, so each record needs its own")
        first[key] = s


class GenerationDataset(Dataset):
    """Prompts with references (captions, VQA answers), for tasks that score generated text.

    Args:
        vis_processor: PIL image -> (3, H, W) tensor (the eval processor).
        text_processor: the chat processor (``qwen_chat``).
        vis_root: folder the image paths are relative to.
        ann_paths: annotation files.
        read: reads the annotation files into ``PromptSample`` s.
        bad_samples: the dataset's policy (default ``error``).
        problems: problems ``read`` collected (the builder's ``BuildProblems``), settled here with the rest.
        prompt_template: how the builder words each prompt (``<image>\n{question}\n...``), as
            reports print it (``results.md``); "" when the prompts have no common form.

    Every record is checked when the set is built and the problems are settled
    together (``BuildProblems``: ``error`` raises them all, ``skip`` leaves
    those records out, so they are not scored). An image that fails to decode
    during evaluation always raises, naming the sample: a scored split must
    not quietly lose samples.
    """

    def __init__(
        self,
        vis_processor: Callable[[Any], torch.Tensor],
        text_processor: Any,
        vis_root: str,
        ann_paths: list[str],
        read: Callable[[list[str]], list[PromptSample]],
        bad_samples: BadSamplePolicy | None = None,
        problems: BuildProblems | None = None,
        prompt_template: str = "",
    ) -> None:
        self.prompt_template = prompt_template
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.vis_root = vis_root
        self.policy = bad_samples or (problems.policy if problems is not None else BadSamplePolicy())
        problems = problems if problems is not None else BuildProblems(self.policy)
        problems.policy = self.policy
        samples = read(ann_paths)
        total = len(samples) + len(problems)
        require_unique_ids(samples, ann_paths)
        fine = []
        for s in samples:
            found = text_processor.count_placeholders(s.prompt)
            if found != len(s.images):
                where = s.where or f"sample {s.id}"
                problems.add(where, f"{where}: {found} image placeholder(s) in the prompt but {len(s.images)} image(s)")
            else:
                fine.append(s)
        missing = check_images_exist(fine, vis_root, ann_paths, problems=problems)  # type: ignore[arg-type]
        self.bad_records: list[BadSampleRecord] = problems.settle(total, ann_paths)
        self.samples = [s for k, s in enumerate(fine) if k not in missing]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        turns = [{"role": "user", "content": sample.prompt}]
        text = self.text_processor(turns, num_images=len(sample.images), sample_id=str(sample.id), add_generation_prompt=True)
        # A prompt over max_len drops its oldest turns with their images (the chat processor says which stay).
        images = [load_image_tensor(self.vis_root, p, self.vis_processor, str(sample.id)) for p in kept_images(sample.images, text)]
        return {
            "id": sample.id,
            "image": torch.stack(images) if images else None,
            **text_fields(text, labels=False),
            "references": sample.references,
            "extra": sample.extra,
            "prompt": sample.prompt,
        }

    def collater(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        out = collate_chat(batch, pad_token_id=int(self.text_processor.tokenizer.pad_token_id), padding_side="left")
        out["references"] = [b["references"] for b in batch]
        out["extra"] = [b["extra"] for b in batch]
        out["prompts"] = [b["prompt"] for b in batch]
        return out
