"""VQAv2 accuracy, following the official evaluation (``VQAEval``) that LAVIS ships.

The official rule: a predicted answer earns ``min(#humans who gave it / 3, 1)``, computed
ten times with each of the ten human answers left out in turn and averaged. Before the
comparison the prediction is normalised (punctuation, number words, articles,
contractions, case, white space). The ground-truth answers are *not* normalised the same
way: only when the ten answers disagree does the official code run them through the
punctuation step, and it never lower-cases or strips them. That asymmetry changes
results (a unanimous ``"Two"`` never matches any prediction, since predictions become
``"2"``), and it is what every published VQAv2 number computed with this code includes,
so it is reproduced here rather than "fixed".

This is LAVIS's copy of the evaluation (prediction always normalised, ground truths
punctuation-processed on disagreement), which differs from a later GT-Vision-Lab revision
that normalises both sides only on disagreement.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from ._ids import describe_missing_ids, require_predictions

__all__ = ["normalize_vqa_answer", "process_digit_article", "process_punctuation", "vizwiz_accuracy", "vqa_accuracy"]

# Official maps, verbatim (including entries that can never fire, such as "Im": words are
# lower-cased before the lookup, and the reversed "somebody'd" entry).
_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset(["a", "an", "the"])
# Note "'" and ":" are not in the list (contractions, times), and "." is handled apart.
_PUNCTUATION = [
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
]  # fmt: skip
# The official pattern is "(?!<=\d)(\.)(?!\d)": "(?!<=" is a negative *lookahead* for the
# text "<=digit", which never follows a period, so in effect it removes every period that
# is not followed by a digit ("2.5" and ".5" keep theirs, "2." and "a.m." lose them).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The official call is periodStrip.sub("", text, re.UNICODE): the flag lands in the
# ``count`` argument (re.UNICODE == 32), so at most 32 periods are removed.
_PERIOD_STRIP_COUNT = int(re.UNICODE)
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``.

    Each punctuation character is deleted when it touches a space somewhere in the text
    (or when the text has a comma between digits anywhere, e.g. "1,000"), and replaced by a
    space otherwise ("red-and-white" -> "red and white"); then periods not followed by a
    digit are removed.

    Args:
        text: an answer.

    Returns:
        The answer with punctuation handled as the official code does (case and
        surrounding white space untouched).
    """
    out = text
    # The conditions test the original text, not the progressively edited one, as upstream.
    digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for p in _PUNCTUATION:
        if p + " " in text or " " + p in text or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str, contractions: Mapping[str, str] = _CONTRACTIONS) -> str:
    """The official ``processDigitArticle``: lower-case, number words to digits, drop articles, restore contractions.

    Args:
        text: an answer (after :func:`process_punctuation`).
        contractions: the contraction map (VizWiz's evaluation has its own).

    Returns:
        The words joined by single spaces.
    """
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(contractions.get(word, word) for word in words)


def normalize_vqa_answer(answer: str) -> str:
    """Normalise a *predicted* answer exactly as the official evaluation does.

    Args:
        answer: raw model output.

    Returns:
        The answer with newlines/tabs made spaces, stripped, punctuation-processed and
        digit/article/contraction-processed.
    """
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


def _ground_truths(annotation: Mapping[str, Any]) -> tuple[list[Any], bool]:
    """The human answers of one annotation and whether they came as official dicts.

    Returns:
        ``(answers, as_dicts)``: official layout gives the ``answers`` dicts (compared as
        whole dicts, as upstream); the LAVIS flattened ``answer`` list gives strings.
    """
    if "answers" in annotation:
        answers = list(annotation["answers"])
        if all(isinstance(a, Mapping) for a in answers):
            return [dict(a) for a in answers], True
        if all(isinstance(a, str) for a in answers):
            return answers, False
        raise TypeError(f"question {annotation.get('question_id')!r}: 'answers' must be dicts with 'answer' or strings")
    if "answer" in annotation:
        answers = annotation["answer"]
        answers = [answers] if isinstance(answers, str) else list(answers)
        if not all(isinstance(a, str) for a in answers):
            raise TypeError(f"question {annotation.get('question_id')!r}: 'answer' must be a list of strings")
        return answers, False
    raise KeyError(f"question {annotation.get('question_id')!r}: annotation has neither 'answers' nor 'answer'")


def _question_accuracy(prediction: str, answers: list[Any], as_dicts: bool) -> float:
    """Official per-question accuracy in [0, 1] for a normalised prediction."""
    texts = [a["answer"] for a in answers] if as_dicts else list(answers)
    if not texts:
        raise ValueError("a question has no ground-truth answers")
    # Ground truths are punctuation-processed only when they disagree, and nothing more.
    if len(set(texts)) > 1:
        texts = [process_punctuation(t) for t in texts]
    accuracies: list[float] = []
    if as_dicts:
        # Upstream leaves out every answer dict *equal* to the current one (after the
        # punctuation step rewrote "answer"). With VQAv2's distinct answer_ids that is
        # exactly one; it is kept as-is for dicts without ids.
        datums = [{**a, "answer": t} for a, t in zip(answers, texts)]
        for datum in datums:
            matching = sum(1 for other in datums if other != datum and other["answer"] == prediction)
            accuracies.append(min(1, float(matching) / 3))
    else:
        for i in range(len(texts)):
            matching = sum(1 for j, t in enumerate(texts) if j != i and t == prediction)
            accuracies.append(min(1, float(matching) / 3))
    return float(sum(accuracies)) / len(accuracies)


def vqa_accuracy(
    annotations: Sequence[Mapping[str, Any]],
    predictions: Mapping[Hashable, str] | Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """VQAv2 accuracy of ``predictions`` under the official rule.

    Args:
        annotations: one dict per question, either the official VQAv2 layout
            (``question_id``, ``answers``: ``[{"answer": ...}, ...]``, ``answer_type``,
            ``question_type``) or LAVIS's flattened layout (``question_id``, ``answer``: list
            of str; ``answer_type`` defaults to ``"other"``, ``question_type`` to ``""``).
        predictions: question id -> predicted answer (a LAVIS result list of
            ``{"question_id", "answer"}`` is accepted too). Ids must equal the annotation ids
            (int vs str matters); predictions for questions not annotated are ignored.

    Returns:
        ``overall`` (percent, rounded to 2 places as the official code rounds),
        ``perQuestionType`` and ``perAnswerType`` (type -> percent, rounded likewise, in
        order of first appearance), and ``per_question`` (question id -> unrounded percent).

    Raises:
        ValueError: an annotated question has no prediction (the ids are named), or a
            question id repeats.
        TypeError: a prediction that is not a str.
    """
    if not isinstance(predictions, Mapping):
        predictions = {item["question_id"]: item["answer"] for item in predictions}
    if not annotations:
        raise ValueError("no annotations to evaluate")
    ids = [annotation["question_id"] for annotation in annotations]
    repeated = [repr(q) for q, count in Counter(ids).items() if count > 1]
    if repeated:
        raise ValueError(f"question id(s) annotated more than once: {', '.join(repeated[:20])}")
    missing = [q for q in ids if q not in predictions]
    if missing:
        shown = describe_missing_ids(missing, predictions, "annotation", "prediction")
        raise ValueError(f"no prediction for annotated question id(s) {shown}")

    per_question: dict[Hashable, float] = {}
    overall: list[float] = []
    by_question_type: dict[str, list[float]] = {}
    by_answer_type: dict[str, list[float]] = {}
    for annotation, question_id in zip(annotations, ids):
        prediction = predictions[question_id]
        if not isinstance(prediction, str):
            raise TypeError(f"prediction for question {question_id!r} must be a str, got {type(prediction).__name__}")
        answers, as_dicts = _ground_truths(annotation)
        accuracy = _question_accuracy(normalize_vqa_answer(prediction), answers, as_dicts)
        overall.append(accuracy)
        by_question_type.setdefault(annotation.get("question_type", ""), []).append(accuracy)
        by_answer_type.setdefault(annotation.get("answer_type", "other"), []).append(accuracy)
        per_question[question_id] = 100 * accuracy

    def percent(values: list[float]) -> float:
        # Same expression and rounding as the official setAccuracy (n=2).
        return round(100 * float(sum(values)) / len(values), 2)

    return {
        "overall": percent(overall),
        "perQuestionType": {name: percent(values) for name, values in by_question_type.items()},
        "perAnswerType": {name: percent(values) for name, values in by_answer_type.items()},
        "per_question": per_question,
    }


# VizWiz's evaluation (the VQA API its site distributes, by Qing Li) carries the VQA
# contraction map with typographic apostrophes: every key and value has "’" for "'",
# except the keys "couldn'tve" and "hadn'tve" and the values of the eight entries below.
_VIZWIZ_STRAIGHT_VALUES = frozenset(["aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres", "whove"])
_VIZWIZ_CONTRACTIONS: dict[str, str] = {
    (key if key in ("couldn'tve", "hadn'tve") else key.replace("'", "\u2019")): (
        value if key in _VIZWIZ_STRAIGHT_VALUES else value.replace("'", "\u2019")
    )
    for key, value in _CONTRACTIONS.items()
}


def vizwiz_accuracy(annotations: Sequence[Mapping[str, Any]], predictions: Mapping[Hashable, str]) -> dict[str, Any]:
    """VizWiz-VQA accuracy under its official evaluation (``VQAEval.evaluate`` of the VizWiz API).

    The VQA formula (each of the ten answers left out in turn, ``min(1, matches / 3)``,
    averaged), with VizWiz's differences from VQAv2's code: the answers are compared
    as given (no punctuation step, whatever their agreement), the answer left out is
    one position (not every equal answer), and the prediction's contractions use
    VizWiz's map. ``"unanswerable"`` is an answer like any other, so a question most
    people could not answer is scored right by the reply "unanswerable"
    (``perAnswerType['unanswerable']`` is that share).

    Args:
        annotations: ``val.json`` records: ``{"image", "question", "answers": [{"answer",
            "answer_confidence"}], "answer_type", "answerable"}``; the image name is the question's id.
        predictions: image name -> the model's reply.

    Returns:
        ``overall`` and ``perAnswerType`` (percent, rounded to 2 places as the official
        code does) and ``per_question`` (image -> unrounded percent).

    Raises:
        ValueError: no annotations, a repeated image or a question without a prediction.
    """
    if not annotations:
        raise ValueError("no VizWiz questions to score")
    ids = [annotation["image"] for annotation in annotations]
    if len(set(ids)) != len(ids):
        raise ValueError("VizWiz questions are keyed by their image; an image repeats")
    require_predictions(ids, predictions, "VizWiz question")
    per_question: dict[Hashable, float] = {}
    overall: list[float] = []
    by_type: dict[str, list[float]] = {}
    for annotation, image in zip(annotations, ids):
        reply = predictions[image].replace("\n", " ").replace("\t", " ").strip()
        reply = process_digit_article(process_punctuation(reply), _VIZWIZ_CONTRACTIONS)
        answers = [a["answer"] for a in annotation["answers"]]
        if not answers:
            raise ValueError(f"VizWiz question {image!r} has no answers")
        accs = [min(1, float(sum(1 for j, a in enumerate(answers) if j != i and a == reply)) / 3) for i in range(len(answers))]
        accuracy = float(sum(accs)) / len(accs)
        overall.append(accuracy)
        by_type.setdefault(str(annotation.get("answer_type", "other")), []).append(accuracy)
        per_question[image] = 100 * accuracy
    return {
        "overall": round(100 * float(sum(overall)) / len(overall), 2),
        "perAnswerType": {name: round(100 * float(sum(values)) / len(values), 2) for name, values in by_type.items()},
        "per_question": per_question,
    }
