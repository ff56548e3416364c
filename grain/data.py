"""Where a task's rows come from: a local `data_dir` of `{task}/{split}.jsonl.gz` files, else the hub.

`data_dir` is the explicit argument, else the `GRAIN_DATA_DIR` environment variable; the files use
the Hugging Face schema of `glue`, `squad` and `conll2003` (the layout of the shared data folder).
Split specs slice like `datasets` does (`train[:5000]`, `validation[50%:]`, `train+validation`), so
a task can train on part of a split that exists (here SQuAD and QNLI have only their dev files).
Without a data dir the hub is tried once, and fails fast with a message when it is unreachable.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

import datasets

from grain.errors import GrainError

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "GRAIN_DATA_DIR"
HOW_TO_SET = (f"set data_dir (the argument or params.yaml) or {DATA_DIR_ENV} to a folder laid out as "
              "{task}/{split}.jsonl.gz")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_CACHE: dict[tuple, datasets.Dataset] = {}
_CACHE_SIZE = 8


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The data folder to read: the argument, else `$GRAIN_DATA_DIR`, else None (meaning the hub)."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise GrainError(f"data_dir {path} is not a folder; {HOW_TO_SET}")
    return path


def split_file(data_dir: str | os.PathLike, task: str, split: str) -> Path:
    """The file holding one split of a task: `{data_dir}/{task}/{split}.jsonl.gz`."""
    return Path(data_dir) / task / f"{split}.jsonl.gz"


def parse_split_spec(split_spec: str) -> datasets.ReadInstruction:
    """A `datasets` read instruction for `train`, `train[:5000]`, `validation[50%:]`, `a+b`."""
    try:
        return datasets.ReadInstruction.from_spec(split_spec.replace(" ", ""))
    except (ValueError, AssertionError) as err:
        raise GrainError(f"bad split spec {split_spec!r}: use a split name with an optional slice, "
                         f"e.g. train, train[:5000], validation[50%:] ({err})") from None


def split_names(split_spec: str) -> list[str]:
    """The split names a spec reads, in order (`train[:10%]+validation` -> train, validation)."""
    names = [part.split("[", 1)[0].strip() for part in split_spec.split("+")]
    parse_split_spec(split_spec)  # validates the slice syntax too
    return names


def read_jsonl_gz(path: str | os.PathLike) -> list[dict]:
    """The rows of a gzip-compressed JSON Lines file."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl_gz(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write rows as gzip JSON Lines (mtime 0, so equal rows give equal bytes), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as handle:
        for row in rows:
            handle.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    os.replace(tmp, path)
    return path


def _read_split_file(path: Path) -> datasets.Dataset:
    """A whole split file as a Dataset, memoised by path, size and mtime (files are read-only inputs)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _CACHE:
        rows = read_jsonl_gz(path)
        if not rows:
            raise GrainError(f"{path} has no rows; rebuild it or point data_dir elsewhere")
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = datasets.Dataset.from_list(rows)
        logger.debug("read %d rows from %s", len(rows), path)
    return _CACHE[key]


def check_fields(dataset: datasets.Dataset, fields: Sequence[str], source: str, task: str) -> None:
    """Raise naming the first field of `fields` the rows lack."""
    for field in fields:
        if field not in dataset.column_names:
            raise GrainError(f"{source} has no field {field!r} (task {task} needs {', '.join(fields)}; "
                             f"found {', '.join(dataset.column_names)})")


def load_local(data_dir: Path, task: str, split_spec: str, fields: Sequence[str] = ()) -> datasets.Dataset:
    """Rows of `split_spec` for `task` from `data_dir`, slices applied in order."""
    names = split_names(split_spec)
    tables = {}
    for name in dict.fromkeys(names):
        path = split_file(data_dir, task, name)
        if not path.is_file():
            raise GrainError(f"no data file {path} for task {task} split {name!r}; {HOW_TO_SET}")
        tables[name] = _read_split_file(path)
        check_fields(tables[name], fields, str(path), task)
    return apply_split_spec(tables, split_spec)


def apply_split_spec(tables: Mapping[str, datasets.Dataset], split_spec: str) -> datasets.Dataset:
    """The rows `split_spec` selects from whole splits (`train[:10%]+validation` concatenates)."""
    instruction = parse_split_spec(split_spec).to_absolute({name: len(t) for name, t in tables.items()})
    parts = [tables[i.splitname].select(range(i.from_, i.to)) for i in instruction]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def hub_offline() -> bool:
    """Whether the environment forbids the hub (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)."""
    return any(os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"} for var in _OFFLINE_VARS)


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint, so a missing network fails in seconds, not minutes."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_hub(hub: Sequence[str], task: str, split_spec: str, fields: Sequence[str] = ()) -> datasets.Dataset:
    """Rows from `datasets.load_dataset(*hub, split=split_spec)`, failing fast when the hub is out of reach."""
    source = "/".join(hub)
    if not hub or hub_offline() or not hub_reachable():
        why = "hub access is off (HF_HUB_OFFLINE)" if hub_offline() else "the Hugging Face hub is not reachable"
        raise GrainError(f"task {task}: no data_dir is set and {why}; {HOW_TO_SET}")
    try:
        dataset = datasets.load_dataset(*hub, split=split_spec)
    except Exception as err:  # noqa: BLE001 - any hub failure becomes one clear line
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise GrainError(f"task {task}: could not load {source} split {split_spec!r} from the hub "
                         f"({message}); {HOW_TO_SET}") from None
    check_fields(dataset, fields, f"hub dataset {source}", task)
    return dataset


def load_split(task: str, split_spec: str, fields: Sequence[str] = (), data_dir: str | os.PathLike | None = None,
               hub: Sequence[str] = ()) -> datasets.Dataset:
    """Raw rows (Hugging Face schema) of one split spec of a task, from `data_dir` or the hub.

    Args:
        task: the task's folder name under `data_dir`.
        split_spec: e.g. `validation`, `train[:5000]`, `validation[50%:]`.
        fields: columns the rows must have; a missing one raises GrainError naming it.
        data_dir: folder of `{task}/{split}.jsonl.gz`; default `$GRAIN_DATA_DIR`, else the hub.
        hub: `datasets.load_dataset` arguments, e.g. `("glue", "sst2")`.
    """
    local = resolve_data_dir(data_dir)
    if local is not None:
        return load_local(local, task, split_spec, fields)
    return load_hub(hub, task, split_spec, fields)
