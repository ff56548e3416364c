"""SQuAD v1.1 metric for `evaluate`, loaded by path: exact match and F1 (percent), official normalisation.

Same inputs as Hugging Face's `squad` metric:
    predictions: [{"id": str, "prediction_text": str}]
    references:  [{"id": str, "answers": {"text": [str], "answer_start": [int]}}]
"""

import datasets
import evaluate

from grain.metrics.squad_v1 import squad_scores

_DESCRIPTION = "SQuAD v1.1 exact match and token F1 after the official answer normalisation, max over gold answers."
_CITATION = "Rajpurkar et al., SQuAD: 100,000+ Questions for Machine Comprehension of Text, EMNLP 2016."
_INPUTS = "predictions: dicts with id and prediction_text; references: dicts with id and answers (text, answer_start)."


class Squad(evaluate.Metric):
    """EM and F1 over the referenced questions."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features({
                "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
                "references": {
                    "id": datasets.Value("string"),
                    "answers": datasets.Sequence({"text": datasets.Value("string"),
                                                  "answer_start": datasets.Value("int32")}),
                },
            }),
        )

    def _compute(self, predictions, references):
        predicted = {p["id"]: p["prediction_text"] for p in predictions}
        gold = {r["id"]: list(r["answers"]["text"]) for r in references}
        return squad_scores(predicted, gold)
