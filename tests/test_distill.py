"""Distillation losses (spec §5): golden values, padding, layer mappings, projections."""

import math

import pytest
import torch

from grain.distill import (
    HiddenProjections,
    default_layer_mapping,
    logit_loss,
    masked_mse,
    parse_layer_mapping,
    soft_cross_entropy,
)
from grain.errors import GrainError
from grain.modeling import GrainOutput


def test_soft_cross_entropy_golden():
    teacher = torch.tensor([[0.0, 8 * math.log(3.0)]])  # softmax(t / 8) = (1/4, 3/4)
    student = torch.zeros(1, 2)  # log_softmax = (-ln 2, -ln 2)
    assert soft_cross_entropy(student, teacher, 8.0).item() == pytest.approx(math.log(2.0))
    student = torch.tensor([[0.0, 8 * math.log(3.0)]])
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert soft_cross_entropy(student, teacher, 8.0).item() == pytest.approx(entropy)


def test_soft_cross_entropy_averages_examples_without_tau_squared():
    teacher = torch.tensor([[0.0, 8 * math.log(3.0)], [1.0, 1.0]])
    student = torch.zeros(2, 2)
    expected = (math.log(2.0) + math.log(2.0)) / 2
    assert soft_cross_entropy(student, teacher, 8.0).item() == pytest.approx(expected)


def test_zero_gradient_when_student_equals_teacher():
    teacher = torch.randn(4, 5)
    student = teacher.clone().requires_grad_(True)
    soft_cross_entropy(student, teacher, 8.0).backward()
    assert student.grad.abs().max().item() < 1e-7


def test_question_answering_sums_start_and_end_over_real_tokens():
    mask = torch.tensor([[1, 1, 1, 0]])
    t = GrainOutput(start_logits=torch.tensor([[0.0, 8 * math.log(3.0), 0.0, 50.0]]),
                    end_logits=torch.tensor([[1.0, 2.0, 3.0, -9.0]]))
    s = GrainOutput(start_logits=torch.tensor([[0.0, 0.0, 0.0, -70.0]]), end_logits=torch.tensor([[1.0, 2.0, 3.0, 20.0]]))
    loss = logit_loss(s, t, {"attention_mask": mask}, 8.0)
    p = torch.tensor([1.0, 3.0, 1.0]) / 5
    start = -(p * torch.log(torch.full((3,), 1 / 3))).sum()
    q = torch.softmax(torch.tensor([1.0, 2.0, 3.0]) / 8, -1)
    end = -(q * q.log()).sum()
    assert loss.item() == pytest.approx((start + end).item(), rel=1e-6)


def test_tagging_uses_labelled_tokens_only():
    t = torch.zeros(1, 3, 2)
    t[0, 0] = torch.tensor([0.0, 8 * math.log(3.0)])
    s = torch.zeros(1, 3, 2)
    s[0, 1] = torch.tensor([100.0, -100.0])  # garbage at an unlabelled position
    batch = {"labels": torch.tensor([[1, -100, 0]]), "attention_mask": torch.ones(1, 3)}
    loss = logit_loss(GrainOutput(logits=s), GrainOutput(logits=t), batch, 8.0)
    assert loss.item() == pytest.approx((math.log(2.0) + math.log(2.0)) / 2)


def test_hidden_mse_golden_and_padding_ignored():
    mask = torch.tensor([[1, 1, 0]])
    student = (torch.zeros(1, 3, 4),) * 3
    teacher = torch.ones(1, 3, 4)
    teacher[0, 2] = 1000.0  # padding
    proj = HiddenProjections(((0, 0), (2, 2)), 4, 4)
    assert proj(student, (teacher,) * 3, mask).item() == pytest.approx(2.0)
    assert masked_mse(torch.zeros(1, 3, 4), teacher, mask).item() == pytest.approx(1.0)


def test_projections_start_as_identity():
    proj = HiddenProjections(((0, 0),), 6, 6)
    x = torch.randn(2, 3, 6)
    torch.testing.assert_close(proj.proj[0](x), x)


def test_default_layer_mappings():
    assert default_layer_mapping(12, 12) == tuple((i, i) for i in range(0, 13, 2))  # the paper's
    assert default_layer_mapping(6, 6) == ((0, 0), (2, 2), (4, 4), (6, 6))  # minilm
    assert default_layer_mapping(3, 3) == ((0, 0), (2, 2), (3, 3))
    assert default_layer_mapping(6, 12) == ((0, 0), (2, 4), (4, 8), (6, 12))


def test_parse_layer_mapping():
    assert parse_layer_mapping("auto", 2, 2) == ((0, 0), (2, 2))
    assert parse_layer_mapping("0,1", 2, 2) == ((0, 0), (1, 1))
    assert parse_layer_mapping("0:0, 2:4", 2, 4) == ((0, 0), (2, 4))
    with pytest.raises(GrainError, match="out of range"):
        parse_layer_mapping("0,5", 2, 2)
    with pytest.raises(GrainError, match="not 'i' or 'i:j'"):
        parse_layer_mapping("zero", 2, 2)
