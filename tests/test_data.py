"""Data sources: split specs, data_dir resolution, clear errors, real shared files."""

import gzip
import json
import socket
import time

import pytest

from grain import data
from grain.errors import GrainError
from grain.tasks import get_task


def _write(root, task, split, rows):
    return data.write_jsonl_gz(rows, root / task / f"{split}.jsonl.gz")


@pytest.fixture
def sst2_dir(tmp_path):
    _write(tmp_path, "sst2", "train", [{"sentence": f"s{i}", "label": i % 2, "idx": i} for i in range(10)])
    _write(tmp_path, "sst2", "validation", [{"sentence": f"v{i}", "label": 1, "idx": i} for i in range(4)])
    return tmp_path


@pytest.mark.parametrize("spec, expected", [
    ("train", list(range(10))),
    ("train[:3]", [0, 1, 2]),
    ("train[50%:]", [5, 6, 7, 8, 9]),
    ("train[-2:]", [8, 9]),
    ("train[2:4]", [2, 3]),
    ("train[:1000]", list(range(10))),  # clamped, as datasets does
])
def test_split_spec_slices(sst2_dir, spec, expected):
    assert list(data.load_split("sst2", spec, data_dir=sst2_dir)["idx"]) == expected


def test_split_specs_concatenate(sst2_dir):
    rows = data.load_split("sst2", "train[:2]+validation[-1:]", data_dir=sst2_dir)
    assert list(rows["sentence"]) == ["s0", "s1", "v3"]
    assert data.split_names("train[:10%]+validation") == ["train", "validation"]


def test_bad_split_spec_is_one_clear_line(sst2_dir):
    with pytest.raises(GrainError, match=r"bad split spec 'train\[:x\]'") as err:
        data.load_split("sst2", "train[:x]", data_dir=sst2_dir)
    assert "\n" not in str(err.value)


def test_data_dir_argument_wins_over_the_environment(sst2_dir, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GRAIN_DATA_DIR", str(tmp_path_factory.mktemp("elsewhere")))
    assert data.resolve_data_dir(sst2_dir) == sst2_dir
    monkeypatch.setenv("GRAIN_DATA_DIR", str(sst2_dir))
    assert data.resolve_data_dir(None) == sst2_dir
    assert len(get_task("sst2").load("validation")) == 4  # from the environment


def test_missing_data_dir_and_missing_file_name_the_path_and_the_fix(sst2_dir):
    with pytest.raises(GrainError, match="is not a folder.*GRAIN_DATA_DIR"):
        data.resolve_data_dir(sst2_dir / "nope")
    with pytest.raises(GrainError) as err:
        get_task("sst2").load("test", data_dir=sst2_dir)
    message = str(err.value)
    assert str(sst2_dir / "sst2" / "test.jsonl.gz") in message and "GRAIN_DATA_DIR" in message
    assert "\n" not in message


def test_wrong_schema_names_the_missing_field(tmp_path):
    _write(tmp_path, "sst2", "validation", [{"text": "hello", "label": 1}])
    with pytest.raises(GrainError, match="has no field 'sentence'.*found text, label"):
        get_task("sst2").load("validation", data_dir=tmp_path)
    _write(tmp_path, "squad", "validation", [{"id": "1", "context": "c", "question": "q"}])
    with pytest.raises(GrainError, match="no field 'answers'"):
        get_task("squad").load("validation", data_dir=tmp_path)


def test_no_data_dir_and_hub_off_fails_fast(monkeypatch):
    monkeypatch.delenv("GRAIN_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(GrainError, match="task sst2: no data_dir is set and hub access is off.*GRAIN_DATA_DIR"):
        get_task("sst2").load("validation")
    assert time.perf_counter() - start < 1.0


def test_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.delenv("GRAIN_DATA_DIR", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)  # never touch the network in tests
    with pytest.raises(GrainError, match="hub is not reachable"):
        get_task("conll2003").load("test")


def test_write_jsonl_gz_is_byte_stable(tmp_path):
    rows = [{"sentence": "é", "label": 1}]
    a = data.write_jsonl_gz(rows, tmp_path / "a.jsonl.gz").read_bytes()
    b = data.write_jsonl_gz(rows, tmp_path / "b.jsonl.gz").read_bytes()
    assert a == b
    assert json.loads(gzip.decompress(a)) == rows[0]
    assert data.read_jsonl_gz(tmp_path / "a.jsonl.gz") == rows


# rows per split of the shared data (data/README.md)
SHARED_ROWS = {
    ("sst2", "train"): 67349, ("sst2", "validation"): 872, ("cola", "validation"): 1043,
    ("mrpc", "validation"): 408, ("qnli", "validation"): 5463, ("rte", "validation"): 277,
    ("stsb", "validation"): 1500, ("wnli", "validation"): 71, ("squad", "validation"): 10570,
    ("conll2003", "train"): 14041, ("conll2003", "validation"): 3250, ("conll2003", "test"): 3453,
}


@pytest.mark.parametrize("task, split", sorted(SHARED_ROWS))
def test_shared_files_load_with_their_fields(data_dir, task, split):
    rows = get_task(task).load(split, data_dir=data_dir)
    assert len(rows) == SHARED_ROWS[task, split]
    assert set(get_task(task).fields) <= set(rows.column_names)


def test_shared_squad_has_no_train_split_but_dev_slices(data_dir):
    squad = get_task("squad")
    with pytest.raises(GrainError, match="squad/train.jsonl.gz"):
        squad.load("train", data_dir=data_dir)
    assert len(squad.load("validation[:50%]", data_dir=data_dir)) == 5285
