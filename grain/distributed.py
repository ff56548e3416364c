"""Data-parallel training under `torchrun` / `accelerate launch` (gloo on CPU, NCCL on GPU).

Every rank takes its slice of the SAME global batch, so the effective batch size, the learning rate
and the schedule are the paper's whatever the number of ranks. Gradients are averaged across ranks
explicitly after each backward pass -- the logit-loss gradients of the mask leaves that the
importance scores are read from (gradient separation: before the hidden loss is backpropagated),
and the weight gradients of the summed loss -- so every rank holds bit-identical scores, selects
bit-identical masks (and rank 0's masks are broadcast as a guard), and takes the same optimizer step.
Only rank 0 writes checkpoints and outputs; a checkpoint holds no per-rank state and resumes on
any number of ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from grain.errors import GrainError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its rank among world_size processes (1 process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistEnv()


def env_from_launcher() -> DistEnv:
    """The rank layout that torchrun / accelerate launch export (RANK, WORLD_SIZE, LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return DistEnv(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(device: str = "cpu") -> DistEnv:
    """Join the process group when launched with several processes; a no-op for one process."""
    env = env_from_launcher()
    if env.enabled and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise GrainError("WORLD_SIZE > 1 but MASTER_ADDR is unset; start with `torchrun --nproc-per-node N` "
                             "or `accelerate launch`")
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend=backend)
    return env


def device_for(env: DistEnv, device: str) -> str:
    """cuda -> this rank's GPU; cpu stays cpu."""
    return f"cuda:{env.local_rank}" if str(device) == "cuda" and env.enabled else str(device)


def split_batch_size(global_batch: int, world_size: int) -> int:
    """Per-rank batch for a global batch; the global batch must divide evenly so no rank idles."""
    if global_batch % world_size:
        raise GrainError(f"batch_size {global_batch} does not split over {world_size} processes; "
                         f"use a multiple of {world_size}")
    return global_batch // world_size


def shard_batch(batch: dict, env: DistEnv) -> dict:
    """This rank's rows of a global batch (contiguous slices; every tensor shares the batch axis)."""
    if not env.enabled:
        return batch
    rows = next(iter(v for v in batch.values() if torch.is_tensor(v))).shape[0]
    split_batch_size(rows, env.world_size)
    return {k: torch.tensor_split(v, env.world_size)[env.rank] if torch.is_tensor(v) else v for k, v in batch.items()}


def average(tensors: list[torch.Tensor], env: DistEnv) -> None:
    """In-place mean over ranks of a list of same-dtype tensors, in one collective call."""
    if not env.enabled or not tensors:
        return
    flat = _flatten_dense_tensors(tensors)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= env.world_size
    for t, reduced in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
        t.copy_(reduced)


def average_gradients(params: list[torch.nn.Parameter], env: DistEnv) -> None:
    """Average `.grad` over ranks; a parameter without a gradient joins as zeros so ranks line up."""
    if not env.enabled:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        average(grads, env)


def broadcast(tensors: list[torch.Tensor], env: DistEnv, src: int = 0) -> None:
    """Copy rank `src`'s tensors to every rank, in place."""
    if not env.enabled:
        return
    for t in tensors:
        dist.broadcast(t, src)


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()
