"""Evaluation metrics: COCO caption scores (BLEU, METEOR, ROUGE-L, CIDEr-D) and VQAv2 accuracy.

``caption.py`` holds the caption scorers and both backends, ``ptb_tokenizer.py`` the
pure-Python PTB tokenizer beside them, ``vqa.py`` the VQAv2 rule.

Both reproduce the reference implementations' numbers: captions those of pycocoevalcap
(with a pure-Python backend for machines without Java), VQA the official VQAv2
evaluation as LAVIS ships it. This package imports only the standard library; the Java
caption backend imports pycocoevalcap when it runs.
"""

from .caption import (
    CAPTION_METRICS,
    bleu_scores,
    caption_agg_metrics,
    caption_evaluate,
    caption_scores,
    cider_d_scores,
    java_backend_available,
    rouge_l_scores,
)
from .ptb_tokenizer import PTB_PUNCTUATIONS, one_line, ptb_tokenize, ptb_tokenize_caption
from .vqa import normalize_vqa_answer, process_digit_article, process_punctuation, vqa_accuracy

__all__ = [
    "CAPTION_METRICS",
    "PTB_PUNCTUATIONS",
    "bleu_scores",
    "caption_agg_metrics",
    "caption_evaluate",
    "caption_scores",
    "cider_d_scores",
    "java_backend_available",
    "normalize_vqa_answer",
    "one_line",
    "process_digit_article",
    "process_punctuation",
    "ptb_tokenize",
    "ptb_tokenize_caption",
    "rouge_l_scores",
    "vqa_accuracy",
]
