"""Data-parallel pruning: two gloo processes hold identical scores and masks at every pruning step,
agree with one process on the same global batch, and a 2-process checkpoint resumes in 1 process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grain.distributed import DistEnv, shard_batch, split_batch_size
from grain.errors import GrainError

WORKER = Path(__file__).parent / "dist" / "worker.py"
# One process sums each gradient over 8 examples; two processes sum over 4 each and then average
# the two means. The same numbers, added in another order: float32 rounding (~1e-7 relative per
# step) that the Adam updates and score averages carry along. Masks are discrete and must be equal.
RTOL, ATOL = 1e-4, 1e-6


def launch(tmp_path, nproc, *args, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               str(WORKER), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    launch(tmp, 2, str(tmp / "two"))
    launch(tmp, 1, str(tmp / "one"))
    load = lambda p: torch.load(p, weights_only=False)  # noqa: E731
    return load(tmp / "two" / "rank0.pt"), load(tmp / "two" / "rank1.pt"), load(tmp / "one" / "rank0.pt")


def test_ranks_hold_identical_scores_and_masks_at_every_pruning_step(runs):
    rank0, rank1, _ = runs
    assert rank0["world_size"] == 2 and len(rank0["pruning_steps"]) > 3
    for a, b in zip(rank0["pruning_steps"], rank1["pruning_steps"], strict=True):
        assert a["step"] == b["step"]
        for x, y in zip(a["masks"] + a["scores"], b["masks"] + b["scores"]):
            assert torch.equal(x, y)  # bit-identical
    for (k, x), y in zip(rank0["weights"].items(), rank1["weights"].values()):
        assert torch.equal(x, y), k


def test_two_processes_match_one_process_on_the_same_global_batch(runs):
    rank0, _, single = runs
    assert single["world_size"] == 1
    for a, b in zip(rank0["pruning_steps"], single["pruning_steps"], strict=True):
        for x, y in zip(a["masks"], b["masks"]):
            assert torch.equal(x, y), f"masks differ at step {a['step']}"
        for x, y in zip(a["scores"], b["scores"]):
            torch.testing.assert_close(x, y, rtol=RTOL, atol=ATOL)
    for k, x in rank0["weights"].items():
        torch.testing.assert_close(x, single["weights"][k], rtol=RTOL, atol=ATOL)


def test_two_process_checkpoint_resumes_in_one_process(tmp_path):
    work = tmp_path / "work"
    killed = launch(tmp_path, 2, str(tmp_path / "killed"), "--work-dir", str(work), "--kill-at", "17", check=False)
    assert killed.returncode != 0 and any(work.glob("*")), "the 2-process run should leave a checkpoint"
    launch(tmp_path, 1, str(tmp_path / "resumed"), "--work-dir", str(work))
    launch(tmp_path, 1, str(tmp_path / "straight"))
    resumed = torch.load(tmp_path / "resumed" / "rank0.pt", weights_only=False)
    straight = torch.load(tmp_path / "straight" / "rank0.pt", weights_only=False)
    for x, y in zip(resumed["masks"], straight["masks"]):
        assert torch.equal(x, y)
    for k, x in resumed["weights"].items():
        torch.testing.assert_close(x, straight["weights"][k], rtol=RTOL, atol=ATOL)


def test_batch_split_rules():
    assert split_batch_size(32, 4) == 8
    with pytest.raises(GrainError, match="batch_size 30 does not split over 4 processes"):
        split_batch_size(30, 4)
    batch = {"input_ids": torch.arange(12).reshape(4, 3), "labels": torch.arange(4)}
    part = shard_batch(batch, DistEnv(rank=1, world_size=2))
    assert part["input_ids"].tolist() == [[6, 7, 8], [9, 10, 11]] and part["labels"].tolist() == [2, 3]
    assert shard_batch(batch, DistEnv()) is batch
