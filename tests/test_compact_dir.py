"""The compact model directory (DESIGN.md): round trips through grain and plain transformers,
pipelines, atomic writes, and errors that name what is wrong with a damaged directory."""

import json
import os
import string
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from conftest import TINY, batch
from safetensors.torch import load_file, save_file

import grain
from grain import accounting
from grain.compaction import check_compact_dir, save_compact
from grain.errors import GrainError
from grain.masks import Masks
from grain.modeling import TASK_CLASSES, GrainConfig

AUTO = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
}
WORDS = "the cat sat on mat where is who was in paris city of red big".split()
QUESTION, CONTEXT = "where is the cat?", "the big red cat sat on the mat in paris."


def write_tokenizer(directory):
    """A WordPiece tokenizer over the tiny vocabulary (99 ids): letters, ##letters, a few words."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", ","]
    vocab += list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase] + WORDS
    assert len(vocab) <= TINY["vocab_size"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return transformers.BertTokenizer(vocab_file=str(directory / "vocab.txt"))


def degenerate_masks(config) -> Masks:
    """Layer 0: heads with no query/key units, with no value units, with one unit; layer 1 empty."""
    masks = Masks.ones_like(config)
    masks.qk[0, 0:8] = 0
    masks.vo[0, 8:16] = 0
    masks.qk[0, 17:24] = 0
    masks.vo[0, 17:24] = 0
    masks.ffn[0, ::3] = 0
    masks.vo[1] = 0
    masks.ffn[1] = 0
    return masks


def make_compact(task, family="bert"):
    fam = dict(pad_token_id=1, type_vocab_size=1) if family == "roberta" else {}
    model = TASK_CLASSES[task](GrainConfig(**TINY, family=family, num_labels=3, **fam)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return grain.compact(model, degenerate_masks(model.config))


@pytest.fixture(scope="module")
def compact_dirs(tmp_path_factory):
    """Compact directories of the three task heads (BERT, with tokenizer) and one RoBERTa directory."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("compact")
    tokenizer = write_tokenizer(root / "vocab")
    dirs = {}
    for task in AUTO:
        model = make_compact(task)
        dirs[task] = (save_compact(model, root / task, tokenizer=tokenizer), model)
    model = make_compact("sequence-classification", "roberta")
    dirs["roberta"] = (save_compact(model, root / "roberta"), model)
    return dirs


def reference_outputs(model, family="bert"):
    ids, mask = batch(pad_id=1 if family == "roberta" else 0)
    with torch.no_grad():
        out = model(ids, mask)
    names = ("logits", "start_logits", "end_logits")
    return ids, mask, {n: getattr(out, n) for n in names if getattr(out, n) is not None} | {
        f"hidden_{i}": h for i, h in enumerate(out.hidden_states)}


def test_directory_contents(compact_dirs):
    path, model = compact_dirs["sequence-classification"]
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_grain.py", "structure.json", "tokenizer.json",
            "tokenizer_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt")) for n in names)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "grain"
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_grain.GrainForSequenceClassification"
    assert config["qk_sizes"] == [[0, 1, 8], []] and config["vo_sizes"] == [[8, 1, 8], []]
    assert config["ffn_sizes"] == [24, 0] and config["head_size"] == 8
    assert json.loads((path / "structure.json").read_text()) == json.loads(json.dumps(accounting.summary(model)))
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert check_compact_dir(path)["model_type"] == "grain"


@pytest.mark.parametrize("name", [*AUTO, "roberta"])
def test_grain_and_registered_auto_round_trip(compact_dirs, name):
    path, model = compact_dirs[name]
    task = "sequence-classification" if name == "roberta" else name
    ids, mask, expected = reference_outputs(model, model.config.family)
    loaded = grain.from_pretrained(path, task=task)
    auto = getattr(transformers, AUTO[task]).from_pretrained(path).eval()  # no remote code: grain registered it
    assert type(auto) is type(model)
    for again in (loaded, auto):
        _, _, got = reference_outputs(again, model.config.family)
        for key, value in expected.items():
            assert torch.equal(value, got[key]), key


SCRIPT = textwrap.dedent('''
    import json, sys
    sys.modules["grain"] = None  # grain cannot be imported here
    import torch, transformers
    from safetensors.torch import save_file
    job = json.loads(sys.argv[1])
    torch.set_num_threads(job["threads"])  # as in the parent, so reductions run in the same order
    try:
        import grain
        raise SystemExit("grain was importable")
    except ImportError:
        pass
    results, report = {}, {}
    for name, (path, auto, ids, mask) in job["dirs"].items():
        model = getattr(transformers, auto).from_pretrained(path, trust_remote_code=True).eval()
        report["module:" + name] = type(model).__module__
        with torch.no_grad():
            out = model(torch.tensor(ids), torch.tensor(mask))
        for key in ("logits", "start_logits", "end_logits"):
            if getattr(out, key) is not None:
                results[f"{name}.{key}"] = getattr(out, key).contiguous()
        for i, h in enumerate(out.hidden_states):
            results[f"{name}.hidden_{i}"] = h.contiguous()
        if name == "roberta":
            continue
        tok = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        if auto == "AutoModelForQuestionAnswering":  # transformers 5.23 has no extractive QA pipeline
            enc = tok(job["question"], job["context"], return_offsets_mapping=True, return_tensors="pt")
            offsets, seq = enc.pop("offset_mapping")[0].tolist(), enc.sequence_ids(0)
            with torch.no_grad():
                out = model(**enc)
            ctx = [i for i, s in enumerate(seq) if s == 1]
            spans = [(s, e) for s in ctx for e in ctx if s <= e < s + 10]
            s, e = max(spans, key=lambda p: float(out.start_logits[0, p[0]] + out.end_logits[0, p[1]]))
            report["answer"] = job["context"][offsets[s][0]:offsets[e][1]]
        else:
            task = "text-classification" if auto == "AutoModelForSequenceClassification" else "token-classification"
            pipe = transformers.pipeline(task, model=model, tokenizer=tok, device="cpu")
            report["pipeline:" + task] = pipe(job["context"])
    save_file(results, job["out"])
    print(json.dumps(report, default=str))
''')


def test_plain_transformers_with_remote_code_and_no_grain(compact_dirs, tmp_path):
    dirs = {}
    for name, (path, model) in compact_dirs.items():
        ids, mask, _ = reference_outputs(model, model.config.family)
        dirs[name] = (str(path), AUTO.get(name, AUTO["sequence-classification"]), ids.tolist(), mask.tolist())
    job = {"dirs": dirs, "out": str(tmp_path / "out.safetensors"), "question": QUESTION, "context": CONTEXT,
           "threads": torch.get_num_threads()}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(job)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    modules = [report["module:" + name] for name in dirs]
    assert all(m.startswith("transformers_modules.") for m in modules)  # the copied modeling file, not grain
    assert report["answer"] and report["answer"] in CONTEXT
    assert report["pipeline:text-classification"][0]["label"].startswith("LABEL_")
    assert {e["word"] for e in report["pipeline:token-classification"]} <= set(CONTEXT.replace(".", " . ").split())
    got = load_file(str(tmp_path / "out.safetensors"))
    for name, (_, model) in compact_dirs.items():
        _, _, expected = reference_outputs(model, model.config.family)
        for key, value in expected.items():
            assert torch.equal(value, got[f"{name}.{key}"]), f"{name}.{key}"


def test_pipelines_with_grain_installed(compact_dirs):
    tokenizer = grain.load_tokenizer(compact_dirs["sequence-classification"][0])
    text = transformers.pipeline("text-classification", model=grain.from_pretrained(
        compact_dirs["sequence-classification"][0], task="sequence-classification"), tokenizer=tokenizer, device="cpu")
    assert text(CONTEXT)[0]["label"] in {"LABEL_0", "LABEL_1", "LABEL_2"}
    tags = transformers.pipeline("token-classification", model=grain.from_pretrained(
        compact_dirs["token-classification"][0], task="token-classification"), tokenizer=tokenizer, device="cpu")
    assert len(tags(CONTEXT)) > 0


def test_question_answering_pipeline(compact_dirs):
    tokenizer = grain.load_tokenizer(compact_dirs["question-answering"][0])
    qa_model = grain.from_pretrained(compact_dirs["question-answering"][0], task="question-answering")
    try:
        qa = transformers.pipeline("question-answering", model=qa_model, tokenizer=tokenizer, device="cpu")
    except KeyError:
        pytest.skip(f"transformers {transformers.__version__} has no extractive question-answering pipeline; "
                    "the QA directory is checked by span decoding in the plain-transformers test")
    assert qa(question=QUESTION, context=CONTEXT)["answer"] in CONTEXT


def test_save_is_atomic(tmp_path):
    model = make_compact("token-classification")
    target = save_compact(model, tmp_path / "model", structure=False)
    assert not (target / "structure.json").exists()

    class Broken:
        def save_pretrained(self, directory):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_compact(model, target, tokenizer=Broken())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the old directory, no temp left
    assert grain.from_pretrained(target, task="token-classification") is not None
    save_compact(model, target)  # replacing an existing directory
    assert (target / "structure.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.fixture
def damaged(tmp_path):
    """A fresh compact directory to damage, and a loader for it."""
    tokenizer = write_tokenizer(tmp_path / "vocab")
    path = save_compact(make_compact("sequence-classification"), tmp_path / "model", tokenizer=tokenizer)

    def load():
        return grain.from_pretrained(path, task="sequence-classification")

    return path, load


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))


def test_missing_and_corrupted_files(damaged):
    path, load = damaged
    (path / "config.json").write_text("{not json")
    with pytest.raises(GrainError, match="config.json is not valid JSON"):
        load()
    (path / "config.json").unlink()
    with pytest.raises(GrainError, match="has no config.json"):
        load()


def test_missing_or_truncated_weights(damaged):
    path, load = damaged
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(GrainError, match="model.safetensors cannot be read .* corrupted"):
        load()
    (path / "model.safetensors").unlink()
    with pytest.raises(GrainError, match="has no model.safetensors"):
        load()
    with pytest.raises(GrainError, match="has no model.safetensors; a compact model directory needs"):
        check_compact_dir(path)


def test_config_sizes_that_disagree_with_the_weights(damaged):
    path, load = damaged
    config = json.loads((path / "config.json").read_text())
    edit_config(path, qk_sizes=[[0, 1, 7], []])
    with pytest.raises(GrainError, match=r"layer.0.attention.self.(query|key).\w+ .* has shape \(9.*\) but config.json "
                                         r"implies \(8.*\) \(from qk_sizes\[0\]\)"):
        load()
    edit_config(path, qk_sizes=config["qk_sizes"], ffn_sizes=[24, 3])
    with pytest.raises(GrainError, match=r"layer.1.(intermediate|output).dense.\w+ .* \(from ffn_sizes\[1\]\)"):
        load()
    edit_config(path, ffn_sizes=config["ffn_sizes"], vo_sizes=[[8, 1], []])
    with pytest.raises(GrainError, match="config.json is inconsistent: layer 0: 3 query/key head sizes but 2 value"):
        load()
    edit_config(path, vo_sizes=[[8, 1, 8]])
    with pytest.raises(GrainError, match="config.json is inconsistent: config.vo_sizes has 1 layers, expected 2"):
        load()


def test_weights_with_wrong_or_missing_tensors(damaged):
    path, load = damaged
    state = load_file(str(path / "model.safetensors"))
    key = "grain.encoder.layer.0.attention.output.dense.weight"
    save_file({**state, key: torch.zeros(32, 5)}, str(path / "model.safetensors"))
    with pytest.raises(GrainError, match=r"output.dense.weight .* shape \(32, 5\) .* \(from vo_sizes\[0\]\)"):
        load()
    save_file({k: v for k, v in state.items() if k != "classifier.weight"}, str(path / "model.safetensors"))
    with pytest.raises(GrainError, match="weight classifier.weight is missing"):  # its own head: required
        load()
    save_file({**state, "grain.encoder.layer.1.extra": torch.zeros(1)}, str(path / "model.safetensors"))
    with pytest.raises(GrainError, match="unexpected weight grain.encoder.layer.1.extra"):
        load()


def test_check_compact_dir_names_the_problem(damaged):
    path, _ = damaged
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).unlink()
    with pytest.raises(GrainError, match="has no tokenizer files"):
        check_compact_dir(path)
    with pytest.raises(GrainError, match="has no tokenizer files"):
        grain.load_tokenizer(path)
    (path / "modeling_grain.py").unlink()
    with pytest.raises(GrainError, match="has no modeling_grain.py"):
        check_compact_dir(path, tokenizer=False)
    (path / "modeling_grain.py").write_text("")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "auto_map"}))
    with pytest.raises(GrainError, match="has no auto_map"):
        check_compact_dir(path, tokenizer=False)
    edit_config(path, model_type="bert")
    with pytest.raises(GrainError, match="has model_type 'bert', expected 'grain'"):
        check_compact_dir(path, tokenizer=False)
    with pytest.raises(GrainError, match="does not exist"):
        check_compact_dir(path / "nowhere", tokenizer=False)
