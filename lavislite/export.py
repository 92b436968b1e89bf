"""Export a trained model as a plain Hugging Face folder.

    python -m lavislite.export --checkpoint output/demo/JOB --out exported/
    python -m lavislite.export --checkpoint output/demo/JOB/release --out exported/ --merge-lora

``--checkpoint`` takes a run folder, its ``release/`` folder, an older
``checkpoint_release.pth`` or an earlier export. The folder written holds the
model family's transformers class (blip2_qwen: ``Blip2ForConditionalGeneration``;
llava with a CLIP or SigLIP tower: ``LlavaForConditionalGeneration``) with a
Qwen ``text_config``, the tokenizer with lavislite's chat template, the
processor and a generation config; see ``lavislite.models.hf_export`` and the
README ("Leaving lavislite"). A model with no transformers counterpart (an
EVA02 tower) is refused with the reason; its release folder is how it leaves.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lavislite.export", description="Export a lavislite model to a Hugging Face folder")
    parser.add_argument("--checkpoint", required=True, help="run folder, release folder, checkpoint_release.pth or export folder")
    parser.add_argument("--out", required=True, help="the folder to write (replaced if it is an earlier export)")
    parser.add_argument("--merge-lora", action="store_true", help="merge the LoRA adapter into the LLM (default: base LLM + FOLDER/adapter/)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    parser.add_argument("--import", dest="imports", action="append", default=[], help="a module or .py file to import first (a user model)")
    args = parser.parse_args(argv)

    from lavislite.common.config import import_user_modules
    from lavislite.common.logger import logger, setup_logger
    from lavislite.models.hf_export import ExportError, export_hf
    from lavislite.models.release import load_from_checkpoint, read_release_config, resolve_checkpoint

    setup_logger()
    try:
        import_user_modules(args.imports)
        source = resolve_checkpoint(args.checkpoint)
        run_config = read_release_config(source)
        model, _, _ = load_from_checkpoint(source)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The model exists only to be exported: merging inside it saves a second LLM copy.
    try:
        summary = export_hf(model, args.out, merge_lora=args.merge_lora, run_config=run_config, max_shard_size=args.max_shard_size, in_place=True)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logger.info("export of %s: %s", source, summary)
    print(f"exported {source} -> {args.out} ({summary['tensors']} tensors, {summary['shards']} shard(s), LoRA: {summary['lora'] or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
