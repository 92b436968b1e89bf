"""COCO caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D, as pycocoevalcap computes them.

Two backends sit behind :func:`caption_evaluate` / :func:`caption_scores`:

* ``"java"`` runs pycocoevalcap itself (its PTBTokenizer and METEOR start a JVM). It is
  the reference every published COCO caption number comes from.
* ``"python"`` needs neither Java nor pycocoevalcap: :func:`ptb_tokenize`
  (``ptb_tokenizer.py``) re-implements the Stanford PTBTokenizer (stanford-corenlp 3.4.1,
  run with ``-preserveLines -lowerCase``) followed by pycocoevalcap's punctuation filter, and
  :func:`bleu_scores`, :func:`rouge_l_scores` and :func:`cider_d_scores` repeat
  pycocoevalcap's arithmetic (same constants, same quirks), so the two backends agree to
  floating-point rounding. METEOR (a Java program with its own paraphrase tables) is not
  re-implemented, so this backend does not report it.

``"auto"`` takes Java when a ``java`` executable is on ``PATH`` and pycocoevalcap imports,
and the pure-Python backend otherwise.

Nothing here imports pycocoevalcap (or anything heavy) at module import time: the Java
backend imports it inside the function that needs it.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TypeVar

from ._ids import describe_missing_ids
from .ptb_tokenizer import PTB_PUNCTUATIONS, one_line, ptb_tokenize, ptb_tokenize_caption

__all__ = [
    "CAPTION_METRICS",
    "PTB_PUNCTUATIONS",
    "bleu_scores",
    "caption_agg_metrics",
    "caption_evaluate",
    "caption_scores",
    "cider_d_scores",
    "java_backend_available",
    "ptb_tokenize",
    "ptb_tokenize_caption",
    "rouge_l_scores",
]

K = TypeVar("K", bound=Hashable)

#: Metric names in the order pycocoevalcap reports them (METEOR only from the Java backend).
CAPTION_METRICS: tuple[str, ...] = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


# =====================================================================================
# Scorers (pycocoevalcap's arithmetic on tokenized captions)
# =====================================================================================


def _ngram_counts(words: Sequence[str], n: int) -> dict[tuple[str, ...], int]:
    """Counts of every 1..n-gram of ``words``."""
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def _check_pairs(gts: Mapping[K, Sequence[str]], res: Mapping[K, Sequence[str]]) -> list[K]:
    """The image ids (gts order); each must have one candidate and at least one reference."""
    if set(gts) != set(res):
        raise ValueError("tokenized references and candidates must have the same image ids")
    for key in gts:
        if len(res[key]) != 1:
            raise ValueError(f"image {key!r}: expected exactly one candidate, got {len(res[key])}")
        if len(gts[key]) < 1:
            raise ValueError(f"image {key!r}: no reference captions")
    return list(gts)


def bleu_scores(
    gts: Mapping[K, Sequence[str]], res: Mapping[K, Sequence[str]], n: int = 4
) -> tuple[list[float], list[list[float]]]:
    """BLEU-1..n as pycocoevalcap's ``Bleu(n)`` computes it (effective reference length "closest").

    Args:
        gts: image id -> tokenized reference captions.
        res: image id -> one-element list with the tokenized candidate.
        n: highest n-gram order.

    Returns:
        ``(corpus, per_image)``: ``corpus[k]`` is BLEU-(k+1) over all images and
        ``per_image[k][i]`` the sentence-level BLEU-(k+1) of the i-th image (``gts`` order).
    """
    # pycocoevalcap adds these to every numerator / denominator so that a zero count gives a
    # tiny score instead of a division by zero; they shift results by ~1e-9 relative, so they
    # are kept to reproduce its numbers.
    tiny, small = 1e-15, 1e-9
    per_image: list[list[float]] = [[] for _ in range(n)]
    total_guess = [0] * n
    total_correct = [0] * n
    total_testlen = 0
    total_reflen = 0
    for key in _check_pairs(gts, res):
        ref_lens: list[int] = []
        max_counts: dict[tuple[str, ...], int] = {}
        for ref in gts[key]:
            words = ref.split()
            ref_lens.append(len(words))
            for ngram, count in _ngram_counts(words, n).items():
                max_counts[ngram] = max(max_counts.get(ngram, 0), count)
        hyp = res[key][0].split()
        testlen = len(hyp)
        # "closest": the reference length nearest the candidate's, the shorter one on a tie.
        reflen = min((abs(length - testlen), length) for length in ref_lens)[1]
        guess = [max(0, testlen - k) for k in range(n)]
        correct = [0] * n
        for ngram, count in _ngram_counts(hyp, n).items():
            correct[len(ngram) - 1] += min(max_counts.get(ngram, 0), count)
        total_testlen += testlen
        total_reflen += reflen
        for k in range(n):
            total_guess[k] += guess[k]
            total_correct[k] += correct[k]
        bleu = 1.0
        for k in range(n):
            bleu *= (correct[k] + tiny) / (guess[k] + small)
            per_image[k].append(bleu ** (1.0 / (k + 1)))
        ratio = (testlen + tiny) / (reflen + small)
        if ratio < 1:  # brevity penalty
            for k in range(n):
                per_image[k][-1] *= math.exp(1 - 1 / ratio)
    corpus: list[float] = []
    bleu = 1.0
    for k in range(n):
        bleu *= (total_correct[k] + tiny) / (total_guess[k] + small)
        corpus.append(bleu ** (1.0 / (k + 1)))
    ratio = (total_testlen + tiny) / (total_reflen + small)
    if ratio < 1:
        corpus = [value * math.exp(1 - 1 / ratio) for value in corpus]
    return corpus, per_image


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a) * len(b)))."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_scores(gts: Mapping[K, Sequence[str]], res: Mapping[K, Sequence[str]]) -> tuple[float, list[float]]:
    """ROUGE-L (F-measure with beta = 1.2) as pycocoevalcap's ``Rouge`` computes it.

    Precision and recall are maximised over the references separately (not as a pair),
    and tokens come from ``split(" ")`` (so an empty caption is one empty token), both as
    in pycocoevalcap.

    Args:
        gts: image id -> tokenized reference captions.
        res: image id -> one-element list with the tokenized candidate.

    Returns:
        ``(mean, per_image)`` with per-image scores in ``gts`` order.
    """
    beta = 1.2
    scores: list[float] = []
    for key in _check_pairs(gts, res):
        candidate = res[key][0].split(" ")
        precisions: list[float] = []
        recalls: list[float] = []
        for ref in gts[key]:
            reference = ref.split(" ")
            lcs = _lcs_length(reference, candidate)
            precisions.append(lcs / len(candidate))
            recalls.append(lcs / len(reference))
        prec, rec = max(precisions), max(recalls)
        if prec != 0 and rec != 0:
            scores.append(((1 + beta**2) * prec * rec) / (rec + beta**2 * prec))
        else:
            scores.append(0.0)
    return sum(scores) / len(scores), scores


def cider_d_scores(
    gts: Mapping[K, Sequence[str]], res: Mapping[K, Sequence[str]], n: int = 4, sigma: float = 6.0
) -> tuple[float, list[float]]:
    """CIDEr-D as pycocoevalcap's ``Cider`` computes it (the "CIDEr" of COCO leaderboards).

    Term frequencies are weighted by IDF computed over the references being evaluated
    (``log(#images) - log(max(1, df))``), similarities are clipped (``min(hyp, ref)``),
    multiplied by a Gaussian length penalty with ``sigma``, averaged over n-gram orders and
    references, and scaled by 10.

    Args:
        gts: image id -> tokenized reference captions.
        res: image id -> one-element list with the tokenized candidate.
        n: highest n-gram order.
        sigma: standard deviation of the length penalty.

    Returns:
        ``(mean, per_image)`` with per-image scores in ``gts`` order.
    """
    keys = _check_pairs(gts, res)
    refs_counts = [[_ngram_counts(ref.split(), n) for ref in gts[key]] for key in keys]
    test_counts = [_ngram_counts(res[key][0].split(), n) for key in keys]
    document_frequency: dict[tuple[str, ...], int] = defaultdict(int)
    for refs in refs_counts:
        for ngram in {ngram for ref in refs for ngram in ref}:
            document_frequency[ngram] += 1
    log_num_images = math.log(float(len(keys)))

    def to_vector(counts: Mapping[tuple[str, ...], int]) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for ngram, term_freq in counts.items():
            order = len(ngram) - 1
            weight = float(term_freq) * (log_num_images - math.log(max(1.0, document_frequency.get(ngram, 0))))
            vec[order][ngram] = weight
            norm[order] += weight**2
            # pycocoevalcap's "length" counts bigrams (index 1), not words; kept for parity.
            if order == 1:
                length += term_freq
        return vec, [math.sqrt(value) for value in norm], length

    penalty_denominator = 2 * sigma**2
    scores: list[float] = []
    for test, refs in zip(test_counts, refs_counts):
        vec_hyp, norm_hyp, length_hyp = to_vector(test)
        total = [0.0] * n
        for ref in refs:
            vec_ref, norm_ref, length_ref = to_vector(ref)
            delta = float(length_hyp - length_ref)
            for order in range(n):
                value = 0.0
                ref_vec = vec_ref[order]
                for ngram, weight in vec_hyp[order].items():
                    ref_weight = ref_vec.get(ngram, 0.0)
                    value += min(weight, ref_weight) * ref_weight  # clipped similarity
                if norm_hyp[order] != 0 and norm_ref[order] != 0:
                    value /= norm_hyp[order] * norm_ref[order]
                total[order] += value * math.exp(-(delta**2) / penalty_denominator)
        scores.append(sum(total) / n / len(refs) * 10.0)
    return sum(scores) / len(scores), scores


# =====================================================================================
# Backends and public API
# =====================================================================================

_JAVA_HINT = (
    "backend='java' runs pycocoevalcap (pip install pycocoevalcap, or pip install lavislite[eval]) "
    "and needs a Java runtime ('java' on PATH) for its PTBTokenizer and METEOR; "
    "backend='python' needs neither"
)


def java_backend_available() -> bool:
    """Whether ``backend="auto"`` would pick Java: ``java`` is on PATH and pycocoevalcap imports."""
    if shutil.which("java") is None:
        return False
    if importlib.util.find_spec("pycocoevalcap") is None:
        return False
    try:
        _import_pycocoevalcap()
    except ImportError:
        return False
    return True


def _import_pycocoevalcap() -> tuple[type, type, type, type, type]:
    # Imported here, not at module level: the library works without pycocoevalcap.
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer, Bleu, Meteor, Rouge, Cider


def _run_java_ptb(lines: Sequence[str]) -> list[str]:
    """pycocoevalcap's Java PTBTokenizer run on ``lines`` (one document, one caption a line), filtered.

    The command, jar and punctuation filter of ``PTBTokenizer().tokenize``; unlike it,
    the number of output lines is checked: pycocoevalcap zips the output lines with the
    image ids, so a caption the tokenizer split in two would silently move every later
    caption onto the wrong image.

    Args:
        lines: the captions, each already on one line (see :func:`one_line`).

    Returns:
        The tokenized captions (lower case, punctuation tokens removed), one per line.

    Raises:
        RuntimeError: Java failed or wrote another number of lines than it was given.
    """
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar_dir = os.path.dirname(os.path.abspath(ptbtokenizer.__file__))
    cmd = ["java", "-cp", ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    with tempfile.TemporaryDirectory(prefix="lavislite-ptb-") as tmp:
        path = os.path.join(tmp, "captions.txt")
        with open(path, "wb") as fh:  # bytes: no newline translation, UTF-8 as pycocoevalcap writes it
            fh.write("\n".join(lines).encode())
        proc = subprocess.run([*cmd, path], cwd=jar_dir, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"pycocoevalcap's PTBTokenizer (Java) exited with {proc.returncode}: "
            f"{proc.stderr.decode(errors='replace')[-1000:].strip()}; {_JAVA_HINT}"
        )
    out = proc.stdout.decode().split("\n")
    if len(out) != len(lines):
        raise RuntimeError(
            f"pycocoevalcap's PTBTokenizer (Java) wrote {len(out)} lines for {len(lines)} captions (a caption "
            "holds a line break it splits at), so its output cannot be matched to the images"
        )
    return [" ".join(w for w in line.rstrip().split(" ") if w not in ptbtokenizer.PUNCTUATIONS) for line in out]


def _java_ptb_tokenize(captions_for_image: Mapping[K, Sequence[str]]) -> dict[K, list[str]]:
    """Like pycocoevalcap's ``PTBTokenizer().tokenize`` (plain strings), each caption first put on one line."""
    keys = [key for key, captions in captions_for_image.items() for _ in captions]
    tokenized = _run_java_ptb([one_line(c) for captions in captions_for_image.values() for c in captions])
    out: dict[K, list[str]] = {key: [] for key in captions_for_image}
    for key, line in zip(keys, tokenized):
        out[key].append(line)
    return out


def _java_evaluate(
    references: dict[K, list[str]], candidates: dict[K, str]
) -> tuple[dict[str, float], dict[K, dict[str, float]]]:
    """Score with pycocoevalcap itself (PTBTokenizer, Bleu(4), Meteor, Rouge, Cider)."""
    try:
        _, Bleu, Meteor, Rouge, Cider = _import_pycocoevalcap()
    except ImportError as error:
        raise ImportError(f"pycocoevalcap is not importable ({error}); {_JAVA_HINT}") from error
    if shutil.which("java") is None:
        raise RuntimeError(f"no 'java' executable on PATH; {_JAVA_HINT}")
    # Two documents, references then candidates, as pycocoevalcap tokenizes them.
    gts = _java_ptb_tokenize(references)
    res = _java_ptb_tokenize({key: [c] for key, c in candidates.items()})
    keys = list(candidates)
    gts = {key: gts[key] for key in keys}
    res = {key: res[key] for key in keys}

    scores: dict[str, float] = {}
    per_image: dict[K, dict[str, float]] = {key: {} for key in keys}

    def record(name: str, corpus: float, values: Iterable[float]) -> None:
        scores[name] = float(corpus)
        for key, value in zip(keys, values):
            per_image[key][name] = float(value)

    bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    for k in range(4):
        record(f"Bleu_{k + 1}", bleu[k], bleu_per_image[k])
    meteor = Meteor()  # starts a JVM; stopped below whatever happens
    try:
        record("METEOR", *meteor.compute_score(gts, res))
    finally:
        _stop_meteor(meteor)
    record("ROUGE_L", *Rouge().compute_score(gts, res))
    record("CIDEr", *Cider().compute_score(gts, res))
    return scores, per_image


def _stop_meteor(meteor: object) -> None:
    """Stop METEOR's JVM now rather than whenever the object is garbage collected."""
    process = getattr(meteor, "meteor_p", None)
    if process is None:
        return
    try:
        process.stdin.close()
    except OSError:
        pass
    process.kill()
    process.wait()


def _python_evaluate(
    references: dict[K, list[str]], candidates: dict[K, str]
) -> tuple[dict[str, float], dict[K, dict[str, float]]]:
    """Score with the pure-Python tokenizer and scorers (no METEOR)."""
    # Tokenized in two documents, references then candidates, as pycocoevalcap does.
    gts = ptb_tokenize(references)
    res = ptb_tokenize({key: [caption] for key, caption in candidates.items()})
    keys = list(candidates)
    scores: dict[str, float] = {}
    per_image: dict[K, dict[str, float]] = {key: {} for key in keys}

    def record(name: str, corpus: float, values: Sequence[float]) -> None:
        scores[name] = float(corpus)
        for key, value in zip(keys, values):
            per_image[key][name] = float(value)

    bleu, bleu_per_image = bleu_scores(gts, res)
    for k in range(4):
        record(f"Bleu_{k + 1}", bleu[k], bleu_per_image[k])
    record("ROUGE_L", *rouge_l_scores(gts, res))
    record("CIDEr", *cider_d_scores(gts, res))
    return scores, per_image


def _prepare(
    references: Mapping[K, Sequence[str]], candidates: Mapping[K, str]
) -> tuple[dict[K, list[str]], dict[K, str]]:
    """Validate the inputs; keep the references of the candidate images, in candidate order."""
    if not candidates:
        raise ValueError("no candidate captions to score")
    for key, caption in candidates.items():
        if not isinstance(caption, str):
            raise TypeError(f"candidate for image {key!r} must be a str, got {type(caption).__name__}")
    missing = [key for key in candidates if key not in references]
    if missing:
        shown = describe_missing_ids(missing, references, "candidate", "reference")
        raise ValueError(f"references are missing for candidate image id(s) {shown}")
    refs: dict[K, list[str]] = {}
    for key in candidates:
        captions = references[key]
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError(f"references for image {key!r} must be a list of str")
        if len(captions) == 0:
            raise ValueError(f"image {key!r} has an empty reference list")
        refs[key] = list(captions)
    return refs, dict(candidates)


def caption_evaluate(
    references: Mapping[K, Sequence[str]], candidates: Mapping[K, str], backend: str = "auto"
) -> tuple[dict[str, float], str, dict[K, dict[str, float]]]:
    """COCO caption metrics of ``candidates`` against ``references``, and which backend scored them.

    Only the images in ``candidates`` are scored (CIDEr's IDF comes from their
    references), as pycocoevalcap's ``COCOEvalCap`` does with a result file.

    Args:
        references: image id -> reference captions (raw text). Ids may be int or str but
            must equal the candidate ids; extra images are ignored.
        candidates: image id -> the generated caption (raw text; may be empty).
        backend: ``"java"`` (pycocoevalcap with Java, adds METEOR), ``"python"`` (no Java,
            no METEOR) or ``"auto"`` (java when available, else python).

    Returns:
        ``(scores, backend_used, per_image)``: corpus scores keyed ``Bleu_1``..``Bleu_4``,
        ``METEOR`` (java only), ``ROUGE_L``, ``CIDEr``; ``"java"`` or ``"python"``; and
        image id -> the same metrics for that image (BLEU at sentence level).

    Raises:
        ValueError: unknown backend, no candidates, or candidate ids without references.
        TypeError: a caption that is not a str.
        ImportError / RuntimeError: ``backend="java"`` without pycocoevalcap or Java.
    """
    if backend not in ("auto", "java", "python"):
        raise ValueError(f"backend must be 'auto', 'java' or 'python', got {backend!r}")
    refs, cands = _prepare(references, candidates)
    if backend == "auto":
        backend = "java" if java_backend_available() else "python"
    if backend == "java":
        scores, per_image = _java_evaluate(refs, cands)
    else:
        scores, per_image = _python_evaluate(refs, cands)
    return scores, backend, per_image


def caption_scores(
    references: Mapping[K, Sequence[str]], candidates: Mapping[K, str], backend: str = "auto"
) -> dict[str, float]:
    """Corpus-level COCO caption metrics; see :func:`caption_evaluate` for the arguments.

    Returns:
        ``Bleu_1``..``Bleu_4``, ``METEOR`` (java backend only), ``ROUGE_L`` and ``CIDEr``.
    """
    return caption_evaluate(references, candidates, backend)[0]


def caption_agg_metrics(scores: Mapping[str, float]) -> float:
    """The single number LAVIS's caption task selects checkpoints by: CIDEr + BLEU-4.

    Args:
        scores: output of :func:`caption_scores`.

    Returns:
        ``scores["CIDEr"] + scores["Bleu_4"]``.
    """
    return scores["CIDEr"] + scores["Bleu_4"]
