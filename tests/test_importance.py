"""Importance scores equal the gradient of a multiplier on the unit's activation (spec §2.2 note);
gradient separation (§3); structure regularisation (§4); the moving average (§2.1)."""

import math

import pytest
import torch
from conftest import TINY, batch
from torch.func import functional_call

from grain.distill import HiddenProjections, default_layer_mapping
from grain.importance import (
    Scores,
    ffn_unit_gradient,
    head_gradient,
    head_importance,
    moving_average,
    query_unit_gradient,
    structure_regularize,
    unit_gradients_from_masks,
    unit_gradients_from_weights,
    update_scores,
    value_unit_gradient,
)
from grain.masks import Masks
from grain.modeling import GrainConfig, GrainForSequenceClassification
from grain.prune import PruneSettings, PruningState, distillation_step


def tiny_model(seed=0, **extra):
    torch.manual_seed(seed)
    config = GrainConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **extra)
    return GrainForSequenceClassification(config).double().eval()


def loss_of(out):
    weights = torch.linspace(-1.0, 2.0, out.logits.numel(), dtype=out.logits.dtype).reshape(out.logits.shape)
    return (out.logits * weights).sum() + out.hidden_states[1].pow(2).mean()


def multiplier_gradients(model, ids, mask, side):
    """Autograd gradient of a multiplier a_r on every query (or key) activation, all layers at once."""
    layers = model.grain.encoder.layer
    a = torch.ones(len(layers), model.config.hidden_size, dtype=torch.float64, requires_grad=True)
    params = {}
    for i, layer in enumerate(layers):
        lin = getattr(layer.attention.self, side)
        prefix = f"grain.encoder.layer.{i}.attention.self.{side}"
        params[f"{prefix}.weight"] = a[i, :, None] * lin.weight  # scaling row r scales activation r
        params[f"{prefix}.bias"] = a[i] * lin.bias
    loss_of(functional_call(model, params, (ids,), {"attention_mask": mask})).backward()
    return a.grad


def test_weight_formulas_equal_multiplier_gradients():
    model = tiny_model()
    ids, mask = batch()
    masks = Masks.ones_like(model, dtype=torch.float64).requires_grad_(True)
    loss_of(model(ids, attention_mask=mask, masks=masks)).backward()
    from_weights = unit_gradients_from_weights(model)
    layers = model.grain.encoder.layer
    ffn = torch.stack([ffn_unit_gradient(l.output.dense.weight, l.output.dense.weight.grad) for l in layers])
    vo = torch.stack([value_unit_gradient(l.attention.output.dense.weight, l.attention.output.dense.weight.grad)
                      for l in layers])
    torch.testing.assert_close(ffn, masks.ffn.grad)  # FFN: W2 columns
    torch.testing.assert_close(vo, masks.vo.grad)  # value/output: W_O columns
    torch.testing.assert_close(from_weights.ffn, masks.ffn.grad)
    model.zero_grad()
    query = multiplier_gradients(model, ids, mask, "query")
    key = multiplier_gradients(model, ids, mask, "key")
    torch.testing.assert_close(from_weights.qk, query)  # query: W_q rows + b_q
    torch.testing.assert_close(query + key, masks.qk.grad)  # the shared qk mask sees both sides
    torch.testing.assert_close(query, key)  # scores are bilinear in a query unit and its key unit


def test_query_bias_term_is_needed():
    model = tiny_model(seed=3)
    with torch.no_grad():
        for layer in model.grain.encoder.layer:
            layer.attention.self.query.bias.normal_(0, 0.5)
    ids, mask = batch()
    loss_of(model(ids, attention_mask=mask)).backward()
    att = model.grain.encoder.layer[0].attention.self
    full = query_unit_gradient(att.query.weight, att.query.weight.grad, att.query.bias, att.query.bias.grad)
    no_bias = (att.query.weight * att.query.weight.grad).sum(-1)
    model.zero_grad()
    expected = multiplier_gradients(model, ids, mask, "query")[0]
    torch.testing.assert_close(full, expected)
    assert not torch.allclose(no_bias, expected)


def test_key_side_setting_adds_the_key_side():
    model = tiny_model()
    ids, mask = batch()
    loss_of(model(ids, attention_mask=mask)).backward()
    query_only = unit_gradients_from_weights(model).qk
    both = unit_gradients_from_weights(model, key_side=True).qk
    torch.testing.assert_close(both, 2 * query_only)
    grads = (torch.ones(2), torch.zeros(2), torch.zeros(2))
    assert unit_gradients_from_masks(*grads).qk.tolist() == [0.5, 0.5]
    assert unit_gradients_from_masks(*grads, key_side=True).qk.tolist() == [1.0, 1.0]


def step_setup(seed=0):
    torch.manual_seed(seed)
    config = GrainConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    teacher = GrainForSequenceClassification(config).eval()
    student = GrainForSequenceClassification(config).train()
    projections = HiddenProjections(default_layer_mapping(2, 2), 32, 32)
    with torch.no_grad():  # move the projections off the identity so the hidden loss is not trivial
        for p in projections.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids, mask = batch()
    return student, teacher, projections, {"input_ids": ids, "attention_mask": mask}


def run_step(settings, setup=None, scaler=None):
    student, teacher, projections, inputs = setup or step_setup()
    masks = Masks.ones_like(student)
    out = distillation_step(student, teacher, projections, inputs, masks, settings, score=True, scaler=scaler)
    return out, student


def test_training_step_scores_are_logit_loss_multiplier_gradients():
    out, student = run_step(PruneSettings())
    # Reference: backward of the logit loss alone, scores from the weights (spec §2.2).
    student2, teacher, _, inputs = step_setup()
    from grain.distill import logit_loss

    loss = logit_loss(student2(**inputs), teacher(**inputs), inputs, 8.0)
    loss.backward()
    reference = unit_gradients_from_weights(student2)
    for got, want in zip(out.gradients.tensors(), reference.tensors()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_gradient_separation_scores_ignore_the_hidden_loss():
    a, student_a = run_step(PruneSettings(hidden_loss_weight=1.0))
    b, student_b = run_step(PruneSettings(hidden_loss_weight=5.0))
    for x, y in zip(a.gradients.tensors(), b.gradients.tensors()):
        torch.testing.assert_close(x, y)
    # ... while the weights are updated from the sum, which does depend on it
    wa = student_a.grain.encoder.layer[0].output.dense.weight.grad
    wb = student_b.grain.encoder.layer[0].output.dense.weight.grad
    assert not torch.allclose(wa, wb)


def test_without_gradient_separation_scores_see_the_hidden_loss():
    a, _ = run_step(PruneSettings(hidden_loss_weight=1.0, gradient_separation=False))
    b, _ = run_step(PruneSettings(hidden_loss_weight=5.0, gradient_separation=False))
    assert not torch.allclose(a.gradients.ffn, b.gradients.ffn)


def test_weight_gradients_are_the_same_with_and_without_separation():
    _, with_gs = run_step(PruneSettings(gradient_separation=True))
    _, without = run_step(PruneSettings(gradient_separation=False))
    for p, q in zip(with_gs.parameters(), without.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad)


class FakeScaler:
    """A constant loss scale (the CPU cannot run a real fp16 grad scaler)."""

    def scale(self, loss):
        return loss * 1024.0

    def get_scale(self):
        return 1024.0


def test_scores_use_unscaled_gradients():
    plain, _ = run_step(PruneSettings())
    scaled, _ = run_step(PruneSettings(), scaler=FakeScaler())
    for x, y in zip(plain.gradients.tensors(), scaled.gradients.tensors()):
        torch.testing.assert_close(x, y)


def test_non_finite_gradients_leave_the_averages_alone():
    config = GrainConfig(**TINY)
    state = PruningState(config, PruneSettings(), 0.5, 100, seed=0)
    grads = Scores(torch.ones(2, 32), torch.full((2, 32), float("nan")), torch.ones(2, 37))
    assert state.step_scores(grads) is None
    assert state.step_scores(Scores(torch.ones(2, 32), torch.ones(2, 32), torch.ones(2, 37))) is not None


@pytest.mark.parametrize("units,expected", [(64, 0.99746), (32, 0.93111), (8, 0.39412), (1, 0.05204), (0, 0.0)])
def test_structure_regularisation_at_known_densities(units, expected):
    vo_mask = torch.zeros(1, 128)
    vo_mask[0, :units] = 1  # head 0 keeps `units` of 64; head 1 keeps all
    vo_mask[0, 64:] = 1
    out = structure_regularize(torch.ones(1, 128), vo_mask, head_size=64, alpha=0.3)
    assert out[0, 0].item() == pytest.approx(expected, abs=1e-5)
    assert out[0, 64].item() == pytest.approx(math.tanh(1 / 0.3))


def test_structure_regularisation_off_at_alpha_zero():
    scores = torch.rand(2, 16)
    assert torch.equal(structure_regularize(scores, torch.zeros(2, 16), head_size=4, alpha=0.0), scores)


def test_moving_average():
    average = torch.zeros(3)
    for _ in range(10):
        average = moving_average(average, torch.ones(3), 0.998)
    assert average[0].item() == pytest.approx(1 - 0.998 ** 10)
    assert moving_average(torch.tensor([2.0]), torch.tensor([4.0]), 0.5).item() == 3.0
    s = update_scores(Scores.zeros_like(Masks.ones_like(GrainConfig(**TINY))),
                      Scores(torch.ones(2, 32), torch.ones(2, 32), torch.ones(2, 37)), 0.998)
    assert s.ffn[0, 0].item() == pytest.approx(0.002)


def test_head_scores_sum_signed_value_gradients():
    grads = torch.tensor([[1.0, -3.0, 2.0, 2.0]])
    assert head_gradient(grads, head_size=2).tolist() == [[-2.0, 4.0]]
    masks = Masks(torch.ones(1, 4), torch.ones(1, 4), torch.ones(1, 3))
    scores = head_importance(Scores(torch.zeros(1, 4), grads, torch.tensor([[-1.0, 2.0, 0.5]])), masks, head_size=2)
    assert scores.vo.tolist() == [[2.0, 2.0, 4.0, 4.0]]
    assert scores.qk.tolist() == [[2.0, 2.0, 4.0, 4.0]]
    assert scores.ffn.tolist() == [[1.0, 2.0, 0.5]]
