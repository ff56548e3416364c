"""Teacher fine-tuning and the shared loop machinery: data order, precision, best/last, outputs."""

import json
import random

import pytest
import torch
from conftest import TINY

from grain.errors import GrainError
from grain.loggers import ListLogger
from grain.modeling import GrainConfig, GrainForSequenceClassification
from grain.optim import build_optimizer, build_scheduler
from grain.train import EpochBatches, TeacherSettings, fit_teacher, optimizer_step


def learnable_batches(n=8, B=8, T=8, seed=0):
    """Label 1 iff token 7 occurs in the row: learnable by a tiny model in a few steps."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(8, 99, (B, T), generator=g)
        labels = torch.randint(0, 2, (B,), generator=g)
        ids[labels == 1, 3] = 7
        out.append({"input_ids": ids, "attention_mask": torch.ones(B, T, dtype=torch.long), "labels": labels})
    return out


def tiny(seed=0):
    torch.manual_seed(seed)
    return GrainForSequenceClassification(GrainConfig(**TINY))


def test_teacher_learns_and_writes_its_dir(tmp_path):
    logger = ListLogger()
    settings = TeacherSettings(epochs=6, learning_rate=3e-3, warmup_ratio=0.1, checkpoint_every=0)
    result = fit_teacher(tiny(), learnable_batches(), settings, logger=logger, output_dir=tmp_path / "teacher",
                         eval_fn=lambda m, masks: {"main": 1.0})
    losses = [v for _, v in logger.series("train/loss")]
    assert len(losses) == 48
    assert sum(losses[-8:]) < sum(losses[:8])
    assert [s for s, _ in logger.series("eval/main")] == [8, 16, 24, 32, 40, 48]
    assert (tmp_path / "teacher" / "model.safetensors").is_file()
    metrics = json.loads((tmp_path / "teacher" / "metrics.json").read_text())
    assert metrics["dev"] == {"main": 1.0} and metrics["steps"] == 48
    assert not result.model.training


def test_keep_best_restores_the_best_weights():
    seen = []

    def eval_fn(model, masks):  # the second evaluation is the best
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"main": [1.0, 3.0, 2.0][len(seen) - 1]}

    settings = TeacherSettings(epochs=3, learning_rate=1e-3, keep="best", checkpoint_every=0)
    result = fit_teacher(tiny(), learnable_batches(4), settings, eval_fn=eval_fn)
    assert result.metrics["kept_step"] == 8 and result.metrics["dev"] == {"main": 3.0}
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, seen[1][k]), k
    seen.clear()
    last = fit_teacher(tiny(), learnable_batches(4), TeacherSettings(epochs=3, learning_rate=1e-3, keep="last",
                                                                    checkpoint_every=0), eval_fn=eval_fn)
    assert last.metrics["dev"] == {"main": 2.0} and last.metrics["kept_step"] == 12
    for k, v in last.model.state_dict().items():
        assert torch.equal(v, seen[2][k]), k


def test_bf16_autocast_runs_on_cpu():
    settings = TeacherSettings(max_steps=3, precision="bf16", checkpoint_every=0)
    result = fit_teacher(tiny(), learnable_batches(2), settings)
    assert result.metrics["steps"] == 3


def test_max_steps_overrides_epochs_and_settings_are_checked():
    result = fit_teacher(tiny(), learnable_batches(2), TeacherSettings(epochs=1, max_steps=5, checkpoint_every=0))
    assert result.metrics["steps"] == 5
    with pytest.raises(GrainError, match="precision"):
        TeacherSettings(precision="fp8")
    with pytest.raises(GrainError, match="unknown key 'lr'"):
        TeacherSettings.from_dict({"lr": 1e-3})


def test_epoch_batches_are_seeded_and_private():
    def shuffled(epoch):  # draws from the global generators, as a loader might
        order = torch.randperm(6).tolist()
        random.shuffle(order)
        return [{"i": i} for i in order]

    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = [b["i"] for _, _, b in EpochBatches(shuffled, seed=4).iterate(0, 12)]
    assert torch.equal(torch.get_rng_state(), before)  # the data order used its own generators
    torch.manual_seed(999)
    b = [b["i"] for _, _, b in EpochBatches(shuffled, seed=4).iterate(0, 12)]
    assert a == b and a[:6] != a[6:]
    resumed = [b["i"] for _, _, b in EpochBatches(shuffled, seed=4).iterate(8, 12)]
    assert resumed == a[8:]
    steps = [(s, e) for s, e, _ in EpochBatches(shuffled, seed=4).iterate(5, 8)]
    assert steps == [(5, 0), (6, 1), (7, 1)]


def test_non_finite_gradients_skip_the_update():
    model = torch.nn.Linear(2, 1)
    optimizer = build_optimizer(model, 0.1, 0.0, 1e-8)
    before = model.weight.detach().clone()
    model(torch.tensor([[float("inf"), 1.0]])).sum().backward()
    norm, stepped = optimizer_step(list(model.parameters()), optimizer, None, 1.0)
    assert not stepped and torch.equal(model.weight, before) and model.weight.grad is None


def test_projection_group_keeps_a_constant_learning_rate():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    extra = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, 1.0, 0.01, 1e-8, constant_params=extra.parameters())
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0, 0.0]
    assert len(optimizer.param_groups[0]["params"]) == 1  # only the Linear weight decays
    scheduler = build_scheduler(optimizer, 2, 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs[0] == lrs[1] == pytest.approx(5 / 8) and lrs[2] == 1.0
