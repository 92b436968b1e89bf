"""COCO caption metrics against what pycocoevalcap 1.2 (with Java) gives.

The fixture (tests/fixtures/coco_caption_ref/captions_a.json) holds real pycocoevalcap
output: the PTBTokenizer result per caption, corpus scores and per-image arrays. The
pure-Python backend must reproduce all of it except METEOR with Java hidden; the Java
backend (pycocoevalcap itself) is checked against it too when Java and pycocoevalcap
are installed.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lavislite.tasks.metrics import (
    caption_agg_metrics,
    caption_evaluate,
    caption_scores,
    java_backend_available,
    ptb_tokenize,
    ptb_tokenize_caption,
)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "coco_caption_ref" / "captions_a.json"
PYTHON_METRICS = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]
ALL_METRICS = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]

# Inputs whose output was taken from the real PTBTokenizer (stanford-corenlp 3.4.1 via
# pycocoevalcap's filter), tokenized together as one document in this order.
PTB_CORNER_CASES = [
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ("the letter x.", "the letter x"),  # "x." before "Mr." (next line) ends a sentence
    ("Mr. Smith is here.", "mr. smith is here"),
    ("U.S. The man", "u.s. the man"),
    ("cannot gonna wanna", "can not gon na wan na"),
    ("don't", "do n't"),
    ("can't.", "ca n't"),
    ("wow!! what?!", "wow !! what ?!"),  # "!!" and "?!" are not in pycocoevalcap's list
    ("a---b -----", "a b -----"),
    ("1 1/2 cups", "1\xa01/2 cups"),  # one token with a no-break space
    ("½ cup", "1/2 cup"),
    ("£5 or €5", "# 5 or $ 5"),
    ("[ok] {ok}", "-lsb- ok -rsb- -lcb- ok -rcb-"),
    ("smile :)", "smile :-rrb-"),
    ("😀 smile", "smile"),
    ("o'clock", "o'clock"),
    ("'tis", "'t is"),
    ("y'all", "y' all"),
    ('the dog\'s "ball"', "the dog 's ball"),
    ("girl’s “toy”", "girl 's toy"),
    ("x-ray.", "x-ray"),
    ("2.5-inch", "2.5-inch"),
    ("1,000 people", "1,000 people"),
    ("3:30 p.m.", "3:30 p.m."),
    ("a...b", "a. b"),
    ("a . . . b", "a b"),
    ("red–white", "red white"),
    ("AT&T vs at&t", "at&t vs at & t"),
    ("&amp;", "&"),
    ("50% #1", "50 % # 1"),
    ("www.google.com", "www.google.com"),
    ("e.g. dogs", "e.g. dogs"),
    ("café", "café"),
    ("naïve İstanbul", "naïve i̇stanbul"),
    ("the street., smiling", "the street. smiling"),
    ("street.; sunny", "street. sunny"),
    ("it's 'stop'", "it 's stop"),
    ("  trailing \n", "trailing"),
]


@pytest.fixture(scope="module")
def ref() -> dict[str, Any]:
    """The fixture plus references (image id -> captions) and candidates in ``image_order``."""
    data = json.loads(FIXTURE.read_text(encoding="utf-8"))
    refs: dict[int, list[str]] = defaultdict(list)
    for ann in data["annotations"]:
        refs[ann["image_id"]].append(ann["caption"])
    cands = {r["image_id"]: r["caption"] for r in data["results"]}
    order = data["image_order"]
    data["refs"] = {i: refs[i] for i in order}
    data["cands"] = {i: cands[i] for i in order}
    return data


Result = tuple[dict[str, float], str, dict[Any, dict[str, float]]]


def assert_matches_fixture(
    ref: dict[str, Any],
    scores: dict[str, float],
    per_image: dict[Any, dict[str, float]],
    metrics: list[str],
    key: Callable[[int], Any] = lambda i: i,
) -> None:
    """Corpus scores and per-image arrays (in ``image_order``) equal the fixture within 1e-6."""
    for name in metrics:
        assert scores[name] == pytest.approx(ref["scores"][name], abs=1e-6), name
        got = [per_image[key(i)][name] for i in ref["image_order"]]
        assert got == pytest.approx(ref["per_image"][name], abs=1e-6), name


def test_python_tokenizer_reproduces_ptbtokenizer(ref: dict[str, Any]) -> None:
    # Tokenized as pycocoevalcap does: all references as one document, candidates as another.
    gts = ptb_tokenize(ref["refs"])
    res = ptb_tokenize({i: [c] for i, c in ref["cands"].items()})
    n_checked = 0
    for image_id in ref["image_order"]:
        assert gts[image_id] == ref["tokenized"]["gts"][str(image_id)], image_id
        assert res[image_id] == ref["tokenized"]["res"][str(image_id)], image_id
        n_checked += len(gts[image_id]) + 1
    assert n_checked == 360
    # The fixture's corner cases, spelled out: parentheses survive as -lrb-/-rrb- (the
    # filter list is upper case), a period before "," or ";" stays on the word.
    assert "an old bus walks down a bench -lrb- in a park -rrb-" in gts[100000]
    assert "two zebras is flying over the street. smiling" in gts[100063]


def test_python_tokenizer_corner_cases() -> None:
    lines = ptb_tokenize({i: [text] for i, (text, _) in enumerate(PTB_CORNER_CASES)})
    assert [lines[i][0] for i in range(len(PTB_CORNER_CASES))] == [want for _, want in PTB_CORNER_CASES]
    # Context crosses lines, as in the Java tokenizer: "I." before a capitalised "He" on
    # the next line is a sentence end ("i" + "."), at the end of the document it is "i.".
    assert ptb_tokenize({1: ["the letter I."], 2: ["He runs"]}) == {1: ["the letter i"], 2: ["he runs"]}
    assert ptb_tokenize_caption("the letter I.") == "the letter i."
    assert ptb_tokenize_caption("") == ""


def test_python_tokenizer_matches_java_tokenizer_on_corner_cases() -> None:
    """Differential check against pycocoevalcap's own PTBTokenizer (one short JVM run)."""
    if shutil.which("java") is None:
        pytest.skip("no 'java' on PATH: cannot run pycocoevalcap's PTBTokenizer")
    try:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError:
        pytest.skip("pycocoevalcap is not installed (pip install pycocoevalcap)")
    captions = {i: [{"caption": text}] for i, (text, _) in enumerate(PTB_CORNER_CASES)}
    java = PTBTokenizer().tokenize(captions)
    python = ptb_tokenize({i: [text] for i, (text, _) in enumerate(PTB_CORNER_CASES)})
    assert python == java


def test_python_backend_without_java(ref: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no java anywhere
    assert shutil.which("java") is None
    assert java_backend_available() is False
    for backend in ("python", "auto"):
        scores, used, per_image = caption_evaluate(ref["refs"], ref["cands"], backend=backend)
        assert used == "python", backend
        assert list(scores) == PYTHON_METRICS  # no METEOR from this backend
        assert set(per_image) == set(ref["image_order"])
        assert all(list(v) == PYTHON_METRICS for v in per_image.values())
        assert_matches_fixture(ref, scores, per_image, PYTHON_METRICS)
    plain = caption_scores(ref["refs"], ref["cands"], backend="auto")
    assert plain == scores
    assert caption_agg_metrics(plain) == pytest.approx(ref["scores"]["CIDEr"] + ref["scores"]["Bleu_4"], abs=2e-6)


@pytest.fixture(scope="module")
def java_result(ref: dict[str, Any]) -> Result:
    """One pycocoevalcap run (its METEOR JVM takes ~10 s to load), shared by the Java tests."""
    if shutil.which("java") is None:
        pytest.skip("no 'java' executable on PATH: pycocoevalcap's PTBTokenizer and METEOR need a JRE")
    try:
        import pycocoevalcap.tokenizer.ptbtokenizer  # noqa: F401
    except ImportError:
        pytest.skip("pycocoevalcap is not installed (pip install pycocoevalcap)")
    return caption_evaluate(ref["refs"], ref["cands"], backend="java")


def test_java_backend_reproduces_fixture(ref: dict[str, Any], java_result: Result) -> None:
    scores, used, per_image = java_result
    assert used == "java"
    assert java_backend_available() is True  # so "auto" would have chosen it
    assert list(scores) == ALL_METRICS
    assert_matches_fixture(ref, scores, per_image, ALL_METRICS)


def test_java_and_python_backends_agree(ref: dict[str, Any], java_result: Result) -> None:
    python_scores, _, python_per_image = caption_evaluate(ref["refs"], ref["cands"], backend="python")
    java_scores, _, java_per_image = java_result
    for name in PYTHON_METRICS:
        assert python_scores[name] == pytest.approx(java_scores[name], abs=1e-12)
        for image_id in ref["image_order"]:
            assert python_per_image[image_id][name] == pytest.approx(java_per_image[image_id][name], abs=1e-12)


@pytest.mark.parametrize("backend", ["java", "python"])
def test_a_line_break_inside_a_caption_moves_no_caption_onto_another_image(backend: str) -> None:
    """Issue 15.6: pycocoevalcap replaces only "\\n"; its Java tokenizer also breaks lines at "\\r",
    U+2028 and the like, so one such caption used to shift every later caption onto the wrong image
    (Java CIDEr 10.0 -> 1.9 here). Each candidate equals its image's reference: CIDEr 10, BLEU-4 1."""
    if backend == "java" and not java_backend_available():
        pytest.skip("no Java or pycocoevalcap: the Java backend cannot run")
    refs = {1: ["a red circle\ron a white background"], 2: ["a blue square\u2028on a black\x0cbackground"], 3: ["a green triangle in the corner"]}
    cands = {1: "a red circle\u2029on a white background", 2: "a blue square\r\non a black\x0bbackground", 3: "a green triangle in the corner"}
    scores, used, per_image = caption_evaluate(refs, cands, backend=backend)
    assert used == backend
    assert scores["CIDEr"] == pytest.approx(10.0)
    assert [per_image[i]["Bleu_4"] for i in (1, 2)] == pytest.approx([1.0, 1.0]) and per_image[3]["Bleu_4"] == pytest.approx(1.0)


def test_java_tokenizer_output_must_have_one_line_per_caption() -> None:
    """The completeness check compares line counts: a caption the tokenizer splits in two fails loudly."""
    if not java_backend_available():
        pytest.skip("no Java or pycocoevalcap: the Java backend cannot run")
    from lavislite.tasks.metrics.caption import _run_java_ptb

    assert _run_java_ptb(["A red circle.", "", "a blue square"]) == ["a red circle", "", "a blue square"]
    with pytest.raises(RuntimeError, match="wrote 3 lines for 2 captions"):
        _run_java_ptb(["a red\rcircle", "a blue square"])


def test_the_ptb_tokenizer_has_its_own_module_and_the_old_imports_work() -> None:
    from lavislite.tasks.metrics import caption, ptb_tokenizer

    assert caption.ptb_tokenize is ptb_tokenizer.ptb_tokenize is ptb_tokenize
    assert caption.ptb_tokenize_caption is ptb_tokenizer.ptb_tokenize_caption
    assert caption.PTB_PUNCTUATIONS is ptb_tokenizer.PTB_PUNCTUATIONS
    assert ptb_tokenizer.one_line("a\rb\u2028c\nd") == "a b c d"
    assert not hasattr(caption, "_PTBLexer")  # the lexer lives in ptb_tokenizer only


def test_empty_candidate() -> None:
    refs = {
        1: ["a dog runs on the grass", "a dog in a park"],
        2: ["two cats on a sofa", "cats sleeping"],
        3: ["a red bus", "a bus on a street"],
    }
    cands = {1: "", 2: "two cats sleeping on a sofa.", 3: "a red bus on the street"}
    scores, used, per_image = caption_evaluate(refs, cands, backend="python")
    assert used == "python"
    assert per_image[1] == {name: 0.0 for name in PYTHON_METRICS}  # brevity penalty exp(1 - 1/~0) == 0
    assert all(math.isfinite(v) for v in scores.values())
    assert per_image[2]["Bleu_1"] > 0.5 and per_image[3]["CIDEr"] > 0


def test_str_ids_give_the_same_scores(ref: dict[str, Any]) -> None:
    refs = {str(i): caps for i, caps in ref["refs"].items()}
    cands = {str(i): cap for i, cap in ref["cands"].items()}
    scores, _, per_image = caption_evaluate(refs, cands, backend="python")
    assert_matches_fixture(ref, scores, per_image, PYTHON_METRICS, key=str)


def test_extra_reference_images_are_ignored(ref: dict[str, Any]) -> None:
    # Like COCOEvalCap with a result file: only candidate images count (CIDEr's IDF too).
    refs = dict(ref["refs"])
    refs[999] = ["an image nobody captioned"] * 5
    scores = caption_scores(refs, ref["cands"], backend="python")
    assert scores["CIDEr"] == pytest.approx(ref["scores"]["CIDEr"], abs=1e-6)


def test_missing_references_are_named() -> None:
    refs = {1: ["a dog"], "2": ["a cat"]}
    with pytest.raises(ValueError, match=r"missing for candidate image id\(s\) 2, 3") as info:
        caption_scores(refs, {1: "a dog", 2: "a cat", 3: "a cow"}, backend="python")
    assert "candidate 2 vs reference '2'" in str(info.value)  # the int/str slip is pointed out


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="backend must be"):
        caption_scores({1: ["a dog"]}, {1: "a dog"}, backend="jvm")
    with pytest.raises(ValueError, match="no candidate"):
        caption_scores({1: ["a dog"]}, {}, backend="python")
    with pytest.raises(TypeError, match="list of str"):
        caption_scores({1: "a dog"}, {1: "a dog"}, backend="python")


def test_java_backend_error_without_java(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises((RuntimeError, ImportError), match="pip install pycocoevalcap"):
        caption_scores({1: ["a dog"]}, {1: "a dog"}, backend="java")


def test_metrics_package_imports_no_torch_or_pycocoevalcap() -> None:
    # ``import lavislite`` itself loads torch (its __init__ registers every model), so the
    # metrics package is loaded here on its own, from its files, in a fresh interpreter.
    package_dir = Path(__file__).resolve().parent.parent / "lavislite" / "tasks" / "metrics"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('metrics_alone', {str(package_dir / '__init__.py')!r},"
        f" submodule_search_locations=[{str(package_dir)!r}])\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['metrics_alone'] = module\n"
        "spec.loader.exec_module(module)\n"
        "assert module.vqa_accuracy and module.caption_scores\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'pycocoevalcap', 'numpy', 'lavislite')]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
