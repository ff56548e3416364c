"""SQuAD v1.1 exact match and F1 with the official answer normalisation.

No maintained library ships the v1.1 scorer (Hugging Face's `squad` metric is a hub script), so this
is the one hand-written metric: lower-case, drop punctuation, drop the articles a/an/the, collapse
white space; EM and token-overlap F1 take the max over the gold answers; totals are percentages.
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """The official v1.1 normalisation: lower, remove punctuation, remove articles, fix white space."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> bool:
    """Whether the normalised strings are equal."""
    return normalize_answer(prediction) == normalize_answer(gold)


def token_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalised strings (0 when they share no token, v1.1 rule)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Mean EM and F1 (percent) over the reference questions; a missing prediction scores 0.

    Args:
        predictions: question id -> predicted answer text.
        references: question id -> the gold answer texts.
    """
    missing = [qid for qid in references if qid not in predictions]
    if missing:
        logger.warning("%d of %d questions have no prediction; they score 0", len(missing), len(references))
    em = f1 = 0.0
    for qid, golds in references.items():
        if qid in predictions and golds:
            em += max(float(exact_match(predictions[qid], g)) for g in golds)
            f1 += max(token_f1(predictions[qid], g) for g in golds)
    total = max(len(references), 1)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}
