"""Score a model on a task split: `evaluate(model, tokenizer, task)` -> metrics (percent) as a dict.

Works on every model form (dense, masked through `masks`, compact) and on any module whose
`forward(input_ids, attention_mask, token_type_ids)` returns `.logits` or `.start_logits/.end_logits`.
Rows are run longest first, in batches of similar length, and outputs are put back in feature order.
Metric values are percentages, as in the paper's tables (SQuAD EM/F1, CoNLL F1, accuracies and
correlations x 100). `grain evaluate` adds parameter counts and density from `grain.accounting`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import datasets
import numpy as np
import torch

from grain.batching import collate, feature_lengths, sorted_batch_indices
from grain.errors import GrainError
from grain.tasks import Task, get_task

logger = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _outputs_of(task: Task, result: Any) -> dict[str, torch.Tensor]:
    """The prediction tensors of a forward pass, checked against the task's head and label count."""
    qa = task.head == "question-answering"
    names = ("start_logits", "end_logits") if qa else ("logits",)
    found = {n: result.get(n) if isinstance(result, dict) else getattr(result, n, None) for n in names}
    missing = [n for n, v in found.items() if v is None]
    if missing:
        raise GrainError(f"the model returned no {missing[0]}; task {task.name} needs a {task.head} model")
    dims = 2 if qa or task.head == "sequence-classification" else 3
    shape = tuple(found[names[0]].shape)
    if len(shape) != dims or (not qa and shape[-1] != task.num_labels):
        raise GrainError(f"the model's {names[0]} have shape {shape}, but task {task.name} needs a {task.head} "
                         f"model with {task.num_labels} labels; load it with task={task.head!r}")
    return found


@torch.inference_mode()
def predict(model: torch.nn.Module, features: datasets.Dataset, task: Task, pad_token_id: int = 0,
            batch_size: int = 64, masks: Any = None, device: str | torch.device = "cpu") -> dict[str, list]:
    """Per-feature outputs in feature order: `logits` (N, labels) for classification, else one array
    per feature trimmed to its length (tagging: `logits` (T, labels); QA: `start_logits`, `end_logits` (T,))."""
    lengths = feature_lengths(features) if len(features) else np.zeros(0, dtype=np.int64)
    keys = [k for k in ("input_ids", "token_type_ids") if k in features.column_names]
    rows = features.select_columns(keys).with_format(None)
    per_token = task.head != "sequence-classification"
    outputs: dict[str, list] = {}
    for indices in sorted_batch_indices(lengths, batch_size):
        batch = collate(rows[indices], pad_token_id)
        inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS}
        result = model(**inputs, masks=masks) if masks is not None else model(**inputs)
        for name, tensor in _outputs_of(task, result).items():
            values = tensor.float().cpu().numpy()
            store = outputs.setdefault(name, [None] * len(features))
            for row, index in enumerate(indices):
                store[index] = values[row, :lengths[index]] if per_token else values[row]
    if not per_token and outputs:
        outputs["logits"] = np.stack(outputs["logits"])  # (N, labels)
    return outputs


def evaluate(model: torch.nn.Module, tokenizer: Any, task: str | Task, split: str | None = None,
             data_dir: str | os.PathLike | None = None, batch_size: int = 64, max_length: int | None = None,
             masks: Any = None, device: str | torch.device = "cpu") -> dict:
    """The task's metrics of `model` on a split, plus `main`, `split` and `n_examples`.

    Args:
        model: a grain model (dense, masked or compact) or any module with the task's head outputs.
        tokenizer: the model's tokenizer.
        task: a Task or a registered task name.
        split: a split spec (`validation`, `test[:500]`); default the split(s) the paper reports.
            MNLI reports matched and mismatched: the mismatched keys end in `_mismatched`.
        data_dir: folder of `{task}/{split}.jsonl.gz`; default `$GRAIN_DATA_DIR`, else the hub.
        batch_size: rows per forward pass.
        max_length: tokens per row; default the task's.
        masks: passed to `model(..., masks=masks)` when given (a masked student).
        device: where the forward passes run; the model is moved there and left in its train/eval mode.

    Returns:
        e.g. `{"accuracy": 91.4, "main": 91.4, "split": "validation", "n_examples": 872, "task": "sst2"}`.
    """
    task = get_task(task)
    splits = [split] if split else list(task.eval_splits)
    was_training = model.training
    model.to(device).eval()
    masks = masks.to(device) if masks is not None and hasattr(masks, "to") else masks
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    result: dict[str, Any] = {}
    try:
        for i, name in enumerate(splits):
            start = time.perf_counter()
            raw = task.load(name, data_dir=data_dir)
            features = task.encode(raw, tokenizer, max_length=max_length)
            outputs = predict(model, features, task, pad, batch_size, masks, device)
            scores = task.compute_metrics(raw, features, outputs)
            suffix = "" if i == 0 else "_" + name.split("_")[-1]
            result.update({f"{k}{suffix}": v for k, v in scores.items()})
            result[f"n_examples{suffix}"] = len(raw)
            logger.info("%s %s: %s %.2f on %d examples (%.1f s)", task.name, name, task.main_metric,
                        scores[task.main_metric], len(raw), time.perf_counter() - start)
    finally:
        model.train(was_training)
    result["main"] = result[task.main_metric]
    result["split"] = "+".join(splits) if len(splits) > 1 else splits[0]
    result["task"] = task.name
    return result
