"""Entity-level NER metric for `evaluate`, loaded by path: a thin wrapper over the `seqeval` package.

Same inputs and keys as Hugging Face's `seqeval` metric: tag sequences in, overall_precision,
overall_recall, overall_f1, overall_accuracy and per-type scores out.
"""

import datasets
import evaluate

from grain.metrics.ner import ner_scores

_DESCRIPTION = "Entity-level precision, recall and F1 of IOB-tagged sequences (conlleval rules by default)."
_CITATION = "Nakayama, seqeval: A Python framework for sequence labeling evaluation, 2018."
_INPUTS = "predictions, references: lists of tag lists. Options: mode ('strict'), scheme ('IOB2', ...), zero_division."


class Seqeval(evaluate.Metric):
    """seqeval scores of predicted against gold tag sequences."""

    def _info(self):
        tags = datasets.Sequence(datasets.Value("string"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": tags, "references": tags}),
        )

    def _compute(self, predictions, references, mode=None, scheme=None, zero_division=0):
        return ner_scores(predictions, references, mode=mode, scheme=scheme, zero_division=zero_division)
