"""AdamW with the usual BERT parameter groups and a linear warm-up / linear decay schedule (spec §6.2)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def _no_decay_ids(model: nn.Module) -> set[int]:
    """Biases and normalisation weights: no weight decay (BERT's convention)."""
    ids = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "bias" or isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
                ids.add(id(p))
    return ids


def build_optimizer(model: nn.Module, learning_rate: float, weight_decay: float, eps: float,
                    constant_params: Iterable[nn.Parameter] = ()) -> torch.optim.AdamW:
    """AdamW over ``model`` (no weight decay on biases and LayerNorm) plus an optional third group.

    The third group (the hidden-state projections during distillation) has no weight decay; the
    scheduler below keeps its learning rate constant, as in the paper's code (spec §5).

    Param groups: 0 decayed, 1 not decayed, 2 constant (only when given).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    no_decay = _no_decay_ids(model)
    groups = [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]
    constant = list(constant_params)
    if constant:
        groups.append({"params": constant, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=learning_rate, eps=eps)


def warmup_decay_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier: linear 0 -> 1 over the warm-up, then linear 1 -> 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then decay for groups 0 and 1; any further group keeps its learning rate."""

    def schedule(step: int) -> float:
        return warmup_decay_factor(step, warmup_steps, total_steps)

    def constant(step: int) -> float:
        return 1.0

    lambdas = [schedule, schedule] + [constant] * (len(optimizer.param_groups) - 2)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
