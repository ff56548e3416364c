"""CoNLL-2003 NER: word-level tags aligned to sub-tokens, entity-level F1 with seqeval, on test.

Only the first sub-token of each word carries the word's tag; the other sub-tokens, special tokens
and padding get -100 and are ignored by the loss. Predictions are read back at first sub-tokens;
words cut off by truncation are predicted `O`, so the score is over every gold entity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from grain import metrics
from grain.batching import IGNORE_INDEX
from grain.errors import GrainError
from grain.tasks.registry import Task, build_features, input_columns, percent, register

CONLL_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")  # HF id order
CONLL_MAX_LENGTH = 128


@dataclass(frozen=True)
class TokenClassificationTask(Task):
    """Tagging of pre-split words (`tokens`) with IOB tags (`ner_tags`, as names or ids)."""

    def tag_ids(self, tags: list) -> list[int]:
        """Tag ids of one sentence; names are looked up in `label_names`."""
        index = {name: i for i, name in enumerate(self.label_names)}
        try:
            return [t if isinstance(t, int) else index[t] for t in tags]
        except KeyError as err:
            known = ", ".join(self.label_names)
            raise GrainError(f"task {self.name}: unknown tag {err.args[0]!r}; known: {known}") from None

    def tag_names(self, tags: list) -> list[str]:
        """Tag names of one sentence (ids are mapped through `label_names`)."""
        return [self.label_names[t] if isinstance(t, int) else t for t in tags]

    def encode(self, raw: datasets.Dataset, tokenizer: Any, max_length: int | None = None) -> datasets.Dataset:
        """Sub-token ids, `labels` (tag id at each word's first sub-token, else -100) and `word_ids`."""
        length = max_length or self.max_length

        def encode_rows(rows: dict, start: int) -> dict:
            encoding = tokenizer(list(rows["tokens"]), is_split_into_words=True, truncation=True, max_length=length)
            words = [[-1 if w is None else w for w in encoding.word_ids(i)] for i in range(len(rows["tokens"]))]
            labels = [align_labels(self.tag_ids(tags), ids) for tags, ids in zip(rows["ner_tags"], words)]
            return {**input_columns(encoding), "labels": labels, "word_ids": words}

        return build_features(raw, encode_rows, datasets.Sequence(datasets.Value("int64")))

    def compute_metrics(self, raw: datasets.Dataset, features: datasets.Dataset, outputs: dict) -> dict:
        """seqeval scores (percent): `f1` (entity-level, main), `precision`, `recall`, `accuracy`, `f1_<TYPE>`."""
        gold = [self.tag_names(tags) for tags in raw["ner_tags"]]
        predicted = [word_predictions(logits.argmax(axis=-1), ids, len(tags), self.label_names)
                     for logits, ids, tags in zip(outputs["logits"], features["word_ids"], gold)]
        scores = metrics.load(self.metric).compute(predictions=predicted, references=gold)
        result = percent(scores, {"f1": "overall_f1", "precision": "overall_precision",
                                  "recall": "overall_recall", "accuracy": "overall_accuracy"})
        result.update({f"f1_{kind}": 100.0 * v["f1"] for kind, v in scores.items() if isinstance(v, dict)})
        return result


def align_labels(tag_ids: list[int], word_ids: list[int]) -> list[int]:
    """Word tags onto sub-tokens: the first sub-token of each word gets its tag, the rest -100."""
    labels, previous = [], -1
    for word in word_ids:
        labels.append(tag_ids[word] if word >= 0 and word != previous else IGNORE_INDEX)
        previous = word if word >= 0 else previous
    return labels


def word_predictions(token_predictions: np.ndarray, word_ids: list[int], n_words: int,
                     label_names: tuple[str, ...]) -> list[str]:
    """Tag names per word from per-sub-token predictions at first sub-tokens; unseen words get `O`."""
    tags, seen = ["O"] * n_words, set()
    for position, word in enumerate(word_ids):
        if word >= 0 and word not in seen:
            seen.add(word)
            tags[word] = label_names[int(token_predictions[position])]
    return tags


CONLL2003 = register(TokenClassificationTask(
    name="conll2003", head="token-classification", num_labels=len(CONLL_TAGS), label_names=CONLL_TAGS,
    eval_split="test", train_split="train", main_metric="f1", max_length=CONLL_MAX_LENGTH,
    fields=("tokens", "ner_tags"), hub=("conll2003",), metric="seqeval"))
