"""Entity-level NER scores with `seqeval` (CoNLL-2003 F1), keyed as Hugging Face's `seqeval` metric.

Default mode is conlleval's (an I- tag after O starts an entity); `mode="strict", scheme="IOB2"`
applies the strict IOB2 rules instead. Values are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB1, IOB2, IOBES, BILOU, IOE1, IOE2

from grain.errors import GrainError

SCHEMES = {"IOB1": IOB1, "IOB2": IOB2, "IOE1": IOE1, "IOE2": IOE2, "IOBES": IOBES, "BILOU": BILOU}


def ner_scores(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]], mode: str | None = None,
               scheme: str | None = None, zero_division: int = 0) -> dict:
    """Overall precision/recall/F1/accuracy plus, per entity type, precision/recall/F1/number.

    Args:
        predictions: one tag sequence per sentence (`B-PER`, `I-PER`, `O`, ...).
        references: the gold tag sequences, same lengths.
        mode: None (conlleval) or "strict".
        scheme: with strict mode, one of SCHEMES (default IOB2).
    """
    predictions, references = [list(p) for p in predictions], [list(r) for r in references]
    if len(predictions) != len(references) or any(len(p) != len(r) for p, r in zip(predictions, references)):
        raise GrainError("NER predictions and references differ in number of sentences or tags")
    options = {"zero_division": zero_division}
    if mode == "strict":
        options.update(mode="strict", scheme=SCHEMES[(scheme or "IOB2").upper()])
    report = classification_report(references, predictions, output_dict=True, **options)
    scores = {kind: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                     "f1": float(v["f1-score"]), "number": int(v["support"])}
              for kind, v in report.items() if not kind.endswith(" avg")}
    scores.update(
        overall_precision=float(precision_score(references, predictions, **options)),
        overall_recall=float(recall_score(references, predictions, **options)),
        overall_f1=float(f1_score(references, predictions, **options)),
        overall_accuracy=float(accuracy_score(references, predictions)),
    )
    return scores
