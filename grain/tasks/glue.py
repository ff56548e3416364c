"""GLUE sentence(-pair) classification and regression tasks, reported on dev as the paper does.

Metrics: CoLA Matthews correlation, STS-B Pearson/Spearman (regression, one output), MRPC and QQP
accuracy and F1, MNLI accuracy on matched and mismatched dev, the rest accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from grain import metrics
from grain.errors import GrainError
from grain.tasks.registry import Task, build_features, input_columns, percent, register

GLUE_MAX_LENGTH = 128  # spec §6.2


@dataclass(frozen=True)
class GlueTask(Task):
    """A GLUE task: one or two text fields and a `label` (float for regression)."""

    text_fields: tuple[str, ...] = ()

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    def encode(self, raw: datasets.Dataset, tokenizer: Any, max_length: int | None = None) -> datasets.Dataset:
        """Token ids of the text (pair), truncated to `max_length`, plus `labels`."""
        length = max_length or self.max_length

        def encode_rows(rows: dict, start: int) -> dict:
            texts = [list(rows[f]) for f in self.text_fields]
            encoding = tokenizer(*texts, truncation=True, max_length=length)
            return {**input_columns(encoding), "labels": list(rows["label"])}

        label_type = datasets.Value("float32" if self.is_regression else "int64")
        return build_features(raw, encode_rows, label_type)

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        """Labels from logits (N, num_labels): argmax, or the single output for regression."""
        logits = np.asarray(logits)
        return logits[:, 0] if self.is_regression else logits.argmax(axis=-1)

    def compute_metrics(self, raw: datasets.Dataset, features: datasets.Dataset, outputs: dict) -> dict:
        """The task's GLUE metrics (percent) of `outputs["logits"]` against `raw["label"]`."""
        references = np.asarray(list(raw["label"]))
        if references.size and np.all(references == -1):
            raise GrainError(f"task {self.name}: this split has no gold labels (GLUE test labels are hidden); "
                             f"evaluate on {self.eval_split}")
        predicted = self.predictions(outputs["logits"])
        scores = metrics.load(self.metric, self.metric_config).compute(
            predictions=predicted.tolist(), references=references.tolist())
        return percent(scores, {k: k for k in scores})


def _glue(name: str, fields: tuple[str, ...], labels: tuple[str, ...], main: str = "accuracy", **kw) -> GlueTask:
    return register(GlueTask(
        name=name, head="sequence-classification", num_labels=len(labels) or 1, label_names=labels,
        eval_split=kw.pop("eval_split", "validation"), train_split="train", main_metric=main,
        max_length=GLUE_MAX_LENGTH, fields=(*fields, "label"), hub=("glue", name), metric="glue",
        metric_config=name, text_fields=fields, **kw))


COLA = _glue("cola", ("sentence",), ("unacceptable", "acceptable"), main="matthews_correlation")
SST2 = _glue("sst2", ("sentence",), ("negative", "positive"))
MRPC = _glue("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"))
QQP = _glue("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"))
STSB = _glue("stsb", ("sentence1", "sentence2"), (), main="pearson")
MNLI = _glue("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
             eval_split="validation_matched", extra_eval_splits=("validation_mismatched",))
QNLI = _glue("qnli", ("question", "sentence"), ("entailment", "not_entailment"))
RTE = _glue("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"))
WNLI = _glue("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"))
