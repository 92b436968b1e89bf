"""Evaluation metrics, one module per official rule; each reproduces the reference code's numbers.

* ``caption.py``: COCO caption scores (BLEU, METEOR, ROUGE-L, CIDEr-D) with both backends
  (pycocoevalcap with Java, and a pure-Python one), ``ptb_tokenizer.py`` beside it;
* ``vqa.py``: the VQAv2 accuracy (as LAVIS ships it; OK-VQA uses it too) and VizWiz's variant;
* ``gqa.py``, ``textvqa.py``, ``pope.py``, ``mme.py``, ``scienceqa.py``: those benchmarks'
  official rules, each a function taking the benchmark's own files as Python objects and
  returning the official aggregates (the official names) plus ``per_question`` outcomes.

This package imports only the standard library; the Java caption backend imports
pycocoevalcap when it runs.
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
from .gqa import gqa_answer, gqa_scores
from .mme import MME_SUBTASKS, mme_answer, mme_scores
from .pope import pope_answer, pope_mean, pope_scores
from .ptb_tokenizer import PTB_PUNCTUATIONS, one_line, ptb_tokenize, ptb_tokenize_caption
from .scienceqa import SCIENCEQA_OPTIONS, scienceqa_answer, scienceqa_scores
from .textvqa import textvqa_answer_scores, textvqa_normalize, textvqa_scores
from .vqa import normalize_vqa_answer, process_digit_article, process_punctuation, vizwiz_accuracy, vqa_accuracy

__all__ = [
    "CAPTION_METRICS",
    "MME_SUBTASKS",
    "PTB_PUNCTUATIONS",
    "SCIENCEQA_OPTIONS",
    "bleu_scores",
    "caption_agg_metrics",
    "caption_evaluate",
    "caption_scores",
    "cider_d_scores",
    "gqa_answer",
    "gqa_scores",
    "java_backend_available",
    "mme_answer",
    "mme_scores",
    "normalize_vqa_answer",
    "one_line",
    "pope_answer",
    "pope_mean",
    "pope_scores",
    "process_digit_article",
    "process_punctuation",
    "ptb_tokenize",
    "ptb_tokenize_caption",
    "rouge_l_scores",
    "scienceqa_answer",
    "scienceqa_scores",
    "textvqa_answer_scores",
    "textvqa_normalize",
    "textvqa_scores",
    "vizwiz_accuracy",
    "vqa_accuracy",
]
