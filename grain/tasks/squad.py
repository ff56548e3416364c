"""SQuAD v1.1 extractive QA: sliding windows over the context, n-best span decoding, EM/F1 on dev.

Encoding follows the standard recipe (spec §6.2: max length 384, document stride 128, max query 64):
the question (cut to 64 tokens) and the context are tokenised as a pair, truncating only the
context and letting it overflow into windows that overlap by the stride. Each window (feature)
gets the answer's start/end token when the first gold answer lies wholly inside it, else the CLS
index; it also keeps its example's row and the character offsets of its context tokens (-1
elsewhere) for decoding. Decoding takes, per example, the best valid span among the top-20 start
and end logits of every window (at most 30 tokens) and cuts its text out of the context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc

from grain import metrics
from grain.tasks.registry import Task, build_features, input_columns, register

SQUAD_MAX_LENGTH = 384
DOC_STRIDE = 128
MAX_QUERY_LENGTH = 64
N_BEST = 20
MAX_ANSWER_LENGTH = 30


@dataclass(frozen=True)
class QuestionAnsweringTask(Task):
    """Extractive QA over rows with `id`, `context`, `question`, `answers{text, answer_start}`."""

    doc_stride: int = DOC_STRIDE
    max_query_length: int = MAX_QUERY_LENGTH
    n_best: int = N_BEST
    max_answer_length: int = MAX_ANSWER_LENGTH

    def encode(self, raw: datasets.Dataset, tokenizer: Any, max_length: int | None = None) -> datasets.Dataset:
        """Windows of (question, context): inputs, `start/end_positions`, `example_index`, `offset_mapping`."""
        length = max_length or self.max_length
        stride = min(self.doc_stride, max(0, (length - self.max_query_length - 3) // 2))

        def encode_rows(rows: dict, start: int) -> dict:
            questions = truncate_questions(list(rows["question"]), tokenizer, self.max_query_length)
            encoding = tokenizer(questions, list(rows["context"]), truncation="only_second", max_length=length,
                                 stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
            columns = input_columns(encoding)
            columns.update(window_labels(encoding, list(rows["answers"]), tokenizer.cls_token_id))
            columns["example_index"] = [start + i for i in encoding["overflow_to_sample_mapping"]]
            return columns

        return build_features(raw, encode_rows)

    def predict_answers(self, raw: datasets.Dataset, features: datasets.Dataset, outputs: dict) -> dict[str, str]:
        """Question id -> answer text decoded from per-feature start/end logits."""
        return postprocess(list(raw["id"]), list(raw["context"]), features, outputs["start_logits"],
                           outputs["end_logits"], self.n_best, self.max_answer_length)

    def compute_metrics(self, raw: datasets.Dataset, features: datasets.Dataset, outputs: dict) -> dict:
        """SQuAD v1.1 `exact_match` and `f1` (percent, max over gold answers)."""
        answers = self.predict_answers(raw, features, outputs)
        predictions = [{"id": qid, "prediction_text": answers.get(qid, "")} for qid in raw["id"]]
        references = [{"id": qid, "answers": ans} for qid, ans in zip(raw["id"], raw["answers"])]
        scores = metrics.load(self.metric).compute(predictions=predictions, references=references)
        return {"exact_match": float(scores["exact_match"]), "f1": float(scores["f1"])}


def truncate_questions(questions: list[str], tokenizer: Any, max_query_length: int) -> list[str]:
    """Questions without leading space, cut after their `max_query_length`-th token."""
    questions = [q.lstrip() for q in questions]
    encoding = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    return [q if len(offsets) <= max_query_length else q[:offsets[max_query_length - 1][1]]
            for q, offsets in zip(questions, encoding["offset_mapping"])]


def window_labels(encoding: Any, answers: list[dict], cls_token_id: int | None) -> dict[str, list]:
    """Start/end token of the first gold answer in each window (CLS when outside) and context offsets."""
    starts, ends, offsets_out = [], [], []
    for i, offsets in enumerate(encoding["offset_mapping"]):
        sequence = encoding.sequence_ids(i)
        context = [j for j, s in enumerate(sequence) if s == 1]
        ids = encoding["input_ids"][i]
        cls = ids.index(cls_token_id) if cls_token_id in ids else 0
        answer = answers[encoding["overflow_to_sample_mapping"][i]]
        start, end = answer_tokens(offsets, context, answer) or (cls, cls)
        starts.append(start)
        ends.append(end)
        context_offsets = np.asarray(offsets, dtype=np.int32).reshape(-1, 2)
        context_offsets[[s != 1 for s in sequence]] = -1
        offsets_out.append(context_offsets)
    return {"start_positions": starts, "end_positions": ends, "offset_mapping": offsets_out}


def answer_tokens(offsets: list, context: list[int], answer: dict) -> tuple[int, int] | None:
    """First and last token of the first gold answer if the window holds all of it, else None."""
    if not context or not answer["text"]:
        return None
    start_char = answer["answer_start"][0]
    end_char = start_char + len(answer["text"][0])
    first, last = context[0], context[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return None
    start = next(j for j in range(first, last + 1) if offsets[j][1] > start_char)
    end = next(j for j in range(last, first - 1, -1) if offsets[j][0] < end_char)
    return start, end


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray, n_best: int,
              max_answer_length: int) -> tuple[float, int, int] | None:
    """(score, start, end) of the best context span among the top-n starts and ends, or None."""
    valid = offsets[:, 0] >= 0
    if not valid.any():
        return None
    start_logits = np.where(valid, start_logits, -np.inf)
    end_logits = np.where(valid, end_logits, -np.inf)
    starts = np.argsort(-start_logits, kind="stable")[:n_best]
    ends = np.argsort(-end_logits, kind="stable")[:n_best]
    s, e = np.meshgrid(starts, ends, indexing="ij")  # (n_best, n_best)
    ok = valid[s] & valid[e] & (e >= s) & (e - s + 1 <= max_answer_length)
    scores = np.where(ok, start_logits[s] + end_logits[e], -np.inf)
    flat = int(np.argmax(scores))
    if not np.isfinite(scores.flat[flat]):
        return None
    return float(scores.flat[flat]), int(s.flat[flat]), int(e.flat[flat])


def feature_offsets(features: datasets.Dataset) -> list[np.ndarray]:
    """Each feature's (tokens, 2) character offsets, read from Arrow without building Python lists."""
    column = features.select_columns(["offset_mapping"]).with_format("arrow")[:].column("offset_mapping")
    tokens = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    pairs = np.concatenate([chunk.flatten().flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks]
                           or [np.zeros(0, dtype=np.int32)]).reshape(-1, 2).astype(np.int64)
    return np.split(pairs, np.cumsum(tokens)[:-1]) if len(tokens) else []


def postprocess(ids: list[str], contexts: list[str], features: datasets.Dataset, start_logits: list,
                end_logits: list, n_best: int = N_BEST, max_answer_length: int = MAX_ANSWER_LENGTH) -> dict[str, str]:
    """Answer text per question: the best span over all windows of each example ('' if none is valid)."""
    best: dict[int, tuple[float, str]] = {}
    rows = zip(features["example_index"], feature_offsets(features), start_logits, end_logits)
    for example, offsets, starts, ends in rows:
        found = best_span(np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64), offsets,
                          n_best, max_answer_length)
        if found and (example not in best or found[0] > best[example][0]):
            score, start, end = found
            best[example] = (score, contexts[example][offsets[start][0]:offsets[end][1]])
    return {qid: best[i][1] if i in best else "" for i, qid in enumerate(ids)}


SQUAD = register(QuestionAnsweringTask(
    name="squad", head="question-answering", num_labels=2, label_names=(), eval_split="validation",
    train_split="train", main_metric="f1", max_length=SQUAD_MAX_LENGTH,
    fields=("id", "context", "question", "answers"), hub=("squad",), metric="squad"))
