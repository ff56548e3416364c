"""ONNX export of compact directories: dynamic batch and sequence axes, equal to torch at two shapes."""

import pytest
import torch
from conftest import TINY

from grain.compaction import save_compact
from grain.errors import GrainError
from grain.export import INPUT_NAMES, example_inputs, export_onnx
from grain.loading import from_pretrained
from grain.masks import Masks
from grain.modeling import TASK_CLASSES, GrainConfig

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install 'grain[onnx]')")
onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'grain[onnx]')")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install 'grain[onnx]')")

SHAPES = [(1, 5), (4, 23)]  # two (batch, sequence) shapes unlike the tracing example (2, 16)


def compact_dir(tmp_path, task, family):
    import grain

    fam = dict(pad_token_id=1, type_vocab_size=1) if family == "roberta" else {}
    model = TASK_CLASSES[task](GrainConfig(**TINY, family=family, num_labels=3, **fam)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    masks = Masks.ones_like(model)
    masks.qk[0, 0:8] = 0  # a head with value units only
    masks.qk[0, 9:16] = 0  # one query/key unit
    masks.vo[0, 20:32] = 0  # head 3 gone, head 2 keeps 4 value units
    masks.ffn[0, 3:] = 0
    masks.vo[1] = 0  # layer 1: empty attention and FFN
    masks.ffn[1] = 0
    return save_compact(grain.compact(model, masks), tmp_path / "compact")


def run_both(model_dir, task, onnx_path, batch, seq):
    model = from_pretrained(model_dir, task=task)
    inputs = example_inputs(model.config, batch, seq, seed=batch * seq)
    with torch.no_grad():
        out = model(*(inputs[n] for n in INPUT_NAMES))
    names = ["start_logits", "end_logits"] if task == "question-answering" else ["logits"]
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(names, {n: inputs[n].numpy() for n in INPUT_NAMES})
    return max(float((getattr(out, n) - torch.from_numpy(g)).abs().max()) for n, g in zip(names, got))


@pytest.mark.parametrize("task, family", [("sequence-classification", "bert"), ("question-answering", "roberta")])
def test_onnx_equals_torch_at_two_shapes(tmp_path, task, family):
    model_dir = compact_dir(tmp_path, task, family)
    result = export_onnx(model_dir, tmp_path / "model.onnx")
    assert result["task"] == task and result["max_abs_diff"] <= 1e-4
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        assert len(dims) == 2 and all(d.dim_param for d in dims), f"{value.name} axes are not dynamic"
    for batch, seq in SHAPES:
        assert run_both(model_dir, task, tmp_path / "model.onnx", batch, seq) <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compact", "model.onnx"]  # no temp file left


def test_failed_check_writes_nothing_and_the_cli_says_why(tmp_path, capsys):
    from grain.cli import main

    model_dir = compact_dir(tmp_path, "token-classification", "bert")
    assert main(["export-onnx", str(model_dir), str(tmp_path / "model.onnx"), "--atol", "-1"]) == 2
    err = capsys.readouterr().err
    assert "error: ONNX export of" in err and "differs from torch by" in err and "not written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compact"]


def test_bad_inputs(tmp_path):
    with pytest.raises(GrainError, match="no config.json"):
        export_onnx(tmp_path, tmp_path / "model.onnx")
    with pytest.raises(GrainError, match="unknown task head 'summarization'"):
        export_onnx(tmp_path, tmp_path / "model.onnx", task="summarization")
