"""GLUE metric for `evaluate`, loaded by path: a thin wrapper over scikit-learn and scipy.

    import evaluate
    from grain.metrics import metric_path
    glue = evaluate.load(metric_path("glue"), "mrpc")
    glue.compute(predictions=[1, 0], references=[1, 1])  # {'accuracy': 0.5, 'f1': 0.666...}
"""

import datasets
import evaluate

from grain.metrics.classification import CONFIG_NAMES
from grain.metrics.classification import glue_scores

_DESCRIPTION = "GLUE task metrics: accuracy, F1 (MRPC, QQP), Matthews correlation (CoLA), Pearson/Spearman (STS-B)."
_CITATION = ("Wang et al., GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding, "
             "ICLR 2019.")
_INPUTS = "predictions: predicted labels (floats for stsb); references: gold labels. config_name: the GLUE task."


class Glue(evaluate.Metric):
    """Metrics of one GLUE task, chosen by `config_name` (sst2, mnli, cola, stsb, ...)."""

    def _info(self):
        if self.config_name not in CONFIG_NAMES:
            raise KeyError(f"config_name must be one of {', '.join(CONFIG_NAMES)}, not {self.config_name!r}")
        value = datasets.Value("float32" if self.config_name == "stsb" else "int64")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": value, "references": value}),
        )

    def _compute(self, predictions, references):
        return glue_scores(self.config_name, predictions, references)
