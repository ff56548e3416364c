"""Every execution scheme computes the same function as the paper's per-head loop and the masked model.

The schemes (grain/modeling.py): heads grouped by width in one fused projection, zero-padded by weight
rows or by copying activations; one padded width for all heads; cached fused weights and in-place
residuals in inference; heads without query/key units as a uniform mean (spec §7).
"""

import pytest
import torch
from conftest import TINY, batch

import grain
from grain.masks import Masks
from grain.modeling import GrainConfig, GrainForSequenceClassification, GrainModel, attention_plan

# Degenerate structures (spec §7): value-only heads, a head with query/key units only (contributes
# nothing), equal and unequal widths, an empty attention sub-layer, an empty FFN.
STRUCTURES = {
    "mixed": dict(qk_sizes=[[8, 3, 0, 5], [1, 1]], vo_sizes=[[2, 8, 4, 1], [6, 6]], ffn_sizes=[5, 0]),
    "qk-only-head": dict(qk_sizes=[[4, 2], [0]], vo_sizes=[[0, 3], [7]], ffn_sizes=[0, 37]),
    "empty-attention": dict(qk_sizes=[[], [2, 2, 2]], vo_sizes=[[], [2, 2, 2]], ffn_sizes=[3, 1]),
    "all-value-only": dict(qk_sizes=[[0, 0], [0]], vo_sizes=[[5, 1], [8]], ffn_sizes=[37, 4]),
    "uniform": dict(qk_sizes=[[6, 6], [6, 6]], vo_sizes=[[6, 6], [6, 6]], ffn_sizes=[12, 12]),
    "wide-ffn": dict(qk_sizes=[[8, 8, 8, 8], [3]], vo_sizes=[[8, 8, 8, 8], [9]], ffn_sizes=[37, 36]),
}
SCHEMES = [("auto", None), ("grouped", False), ("grouped", True), ("padded", None)]


def pair(sizes, impl, gather, seed=0):
    """A model with `impl` and the paper-style loop model with the same weights."""
    torch.manual_seed(seed)
    model = GrainForSequenceClassification(GrainConfig(**TINY, **sizes, attention_impl=impl)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # beyond the init scale, so every term matters
    for layer in model.grain.encoder.layer:
        layer.attention.self.gather = gather
    loop = GrainForSequenceClassification(GrainConfig(**TINY, **sizes, attention_impl="loop")).eval()
    loop.load_state_dict(model.state_dict())
    return model, loop


def assert_outputs_close(a, b, atol=1e-5):
    assert torch.allclose(a.logits, b.logits, atol=atol), (a.logits - b.logits).abs().max()
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert torch.allclose(x, y, atol=atol), (x - y).abs().max()


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("impl, gather", SCHEMES)
@pytest.mark.parametrize("mode", ["inference", "no_grad", "grad"])
def test_schemes_equal_the_loop(structure, impl, gather, mode):
    model, loop = pair(STRUCTURES[structure], impl, gather)
    ids, mask = batch()
    context = {"inference": torch.inference_mode, "no_grad": torch.no_grad, "grad": torch.enable_grad}[mode]
    with context():
        for _ in range(2):  # the second pass runs on cached fused weights
            assert_outputs_close(model(ids, mask), loop(ids, mask))
        last = model(ids, mask, output_hidden_states=False)  # residuals added in place
        assert last.hidden_states is None
        assert torch.allclose(last.logits, loop(ids, mask).logits, atol=1e-5)
        assert torch.allclose(model(ids).logits, loop(ids).logits, atol=1e-5)  # no padding: no bias


@pytest.mark.parametrize("impl, gather", SCHEMES)
def test_gradients_equal_the_loop(impl, gather):
    model, loop = pair(STRUCTURES["mixed"], impl, gather)
    ids, mask = batch()
    for m in (model, loop):
        m(ids, mask, labels=torch.tensor([0, 1, 1])).loss.backward()
    for (name, p), q in zip(model.named_parameters(), loop.parameters()):
        if p.grad is None or q.grad is None:  # unused (zero-sized) weights of an empty sub-layer
            assert p.grad is None and q.grad is None and p.numel() == 0, name
            continue
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_training_mode_with_dropout_runs_every_kind_of_head():
    model, _ = pair(STRUCTURES["mixed"], "auto", None)
    model.train()
    out = model(*batch(), labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.grain.encoder.layer[0].attention.self.value.weight.grad is not None


@pytest.mark.parametrize("impl, gather", SCHEMES)
def test_masked_equals_compact(impl, gather):
    """The masked dense model and its compaction agree to 1e-5 in fp32 (DESIGN), degenerate heads included."""
    torch.manual_seed(0)
    dense = GrainForSequenceClassification(GrainConfig(**TINY, attention_impl=impl)).eval()
    masks = Masks.ones_like(dense)
    masks.qk[0, 0:8] = 0  # head 0: value units only (uniform attention)
    masks.qk[0, 9:14] = 0
    masks.vo[0, 20:29] = 0  # head 2 keeps 3 value units
    masks.vo[0, 24:32] = 0  # head 3 loses every value unit (its query/key units go too)
    masks.ffn[0, 3:] = 0
    masks.vo[1] = 0  # layer 1: empty attention
    masks.ffn[1] = 0  # and empty FFN
    small = grain.compact(dense, masks).eval()
    for layer in small.grain.encoder.layer:
        layer.attention.self.gather = gather
    ids, mask = batch()
    with torch.inference_mode():
        assert_outputs_close(dense(ids, mask, masks=masks), small(ids, mask))


def test_cached_weights_follow_parameter_updates():
    model, loop = pair(STRUCTURES["mixed"], "auto", None)
    ids, mask = batch()
    with torch.inference_mode():
        model(ids, mask)  # builds the caches
    with torch.no_grad():
        for m in (model, loop):
            for name, p in m.named_parameters():
                if "attention" in name or "output.dense" in name:
                    p.mul_(1.5)
    with torch.inference_mode():
        assert_outputs_close(model(ids, mask), loop(ids, mask))
    loop.load_state_dict({k: v * 0.5 for k, v in loop.state_dict().items()})
    model.load_state_dict(loop.state_dict())
    with torch.no_grad():
        assert_outputs_close(model(ids, mask), loop(ids, mask))


def test_a_model_built_in_inference_mode_runs_without_caching():
    with torch.inference_mode():
        torch.manual_seed(0)
        model = GrainModel(GrainConfig(**TINY, **STRUCTURES["mixed"])).eval()
        ids, mask = batch()
        a, b = model(ids, mask), model(ids, mask)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)


def test_plan_groups_heads_by_width_and_drops_heads_without_values():
    plan = attention_plan([8, 3, 0, 5, 2], [2, 8, 4, 5, 0], "grouped", gather=False)
    assert plan.groups == ((5, (3,)), (8, (0, 1)))  # head 4 has no value units: left out
    assert plan.mean_heads == (2,)
    A, V, zero = 18, 19, 2 * 18 + 19
    assert plan.rows[:5] == (11, 12, 13, 14, 15)  # head 3's query rows (query offsets 0, 8, 11, 11)
    assert plan.rows[5:10] == (A + 11, A + 12, A + 13, A + 14, A + 15)  # its key rows
    assert plan.rows[10:15] == (2 * A + 14, 2 * A + 15, 2 * A + 16, 2 * A + 17, 2 * A + 18)  # value rows
    assert plan.rows[15:23] == (0, 1, 2, 3, 4, 5, 6, 7)  # head 0's query rows (width 8, no padding)
    assert plan.rows[23:31] == (8, 9, 10, zero, zero, zero, zero, zero)  # head 1: 3 query rows, 5 zero rows
    assert plan.columns[:5] == (14, 15, 16, 17, 18)  # head 3's value columns of W_O
    assert plan.columns[5:13] == (0, 1, V, V, V, V, V, V)  # head 0: 2 value units, padding reads the zero
    assert plan.columns[-4:] == (10, 11, 12, 13)  # the uniform head's values come last
    assert not plan.identity and not plan.gather


def test_plan_of_uniform_heads_is_the_plain_layout():
    plan = attention_plan([4, 4, 4], [4, 4, 4])
    assert plan.identity and plan.groups == ((4, (0, 1, 2)),) and not plan.gather
    assert attention_plan([4, 4], [4, 4], multiple=8).groups == ((8, (0, 1)),)


def test_padded_scheme_is_one_call_over_every_head_with_values():
    plan = attention_plan([8, 3, 0, 5], [2, 8, 4, 1], "padded")
    assert plan.groups == ((8, (0, 1, 2, 3)),) and plan.mean_heads == ()


def test_bfloat16_inference_is_close_to_float32():
    model, _ = pair(STRUCTURES["mixed"], "auto", None)
    ids, mask = batch()
    with torch.inference_mode():
        expected = model(ids, mask).logits
        got = model.to(torch.bfloat16)(ids, mask).logits.float()
    assert torch.allclose(expected, got, atol=0.1, rtol=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (widths rounded to 8 there)")
def test_cuda_plan_equals_the_loop():
    model, loop = pair(STRUCTURES["mixed"], "auto", None)
    model, loop = model.cuda(), loop.cuda()
    ids, mask = (t.cuda() for t in batch())
    with torch.inference_mode():
        a, b = model(ids, mask), loop(ids, mask)
    assert torch.allclose(a.logits, b.logits, atol=1e-4)
