"""Knowledge-distillation losses (spec §5): soft cross-entropy on logits and hidden-state MSE.

* Logit loss: -sum_c softmax(z_T / tau)_c * log_softmax(z_S / tau)_c, no tau^2 factor, averaged
  over examples; QA sums a start and an end term (softmax over the sequence's real tokens); tagging
  averages over labelled tokens. Ground-truth labels are never used (spec §3).
* Hidden loss: sum over mapped layer pairs (i, j) of MSE(proj_i(H_i^S), H_j^T) over real tokens,
  where H_0 is the embedding output and proj_i a Linear initialised to the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grain.errors import GrainError

_MASKED = -1e9  # a finite "minus infinity": 0 * log_softmax stays 0 at masked positions


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 8.0,
                       valid: torch.Tensor | None = None) -> torch.Tensor:
    """Soft-target cross-entropy over the last dimension, averaged over the other positions.

    Args:
        student_logits: (..., C) student logits.
        teacher_logits: (..., C) teacher logits (no gradient needed).
        temperature: tau; both distributions are softened by it.
        valid: optional (...) boolean; only these positions are averaged.

    Returns:
        A scalar loss.
    """
    target = F.softmax(teacher_logits.float() / temperature, dim=-1)
    log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    per_position = -(target * log_probs).sum(-1)  # (...)
    if valid is None:
        return per_position.mean()
    valid = valid.to(per_position.dtype)
    return (per_position * valid).sum() / valid.sum().clamp_min(1.0)


def _positions_ce(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                  attention_mask: torch.Tensor | None) -> torch.Tensor:
    """QA: a distribution over token positions; padding positions take no probability."""
    if attention_mask is not None:
        pad = attention_mask == 0
        student, teacher = student.float().masked_fill(pad, _MASKED), teacher.float().masked_fill(pad, _MASKED)
    return soft_cross_entropy(student, teacher, temperature)


def logit_loss(student_out, teacher_out, batch: dict, temperature: float = 8.0) -> torch.Tensor:
    """The logit-distillation loss L_CE for any task head (spec §5, Eq. 6).

    Question answering (``start_logits``): start term + end term. Tagging (3-D ``logits``): per
    token, over tokens with a label (``labels != -100``) when labels are present, else over real
    tokens; the teacher was never trained on the other positions. Classification: per example.
    Regression (one logit): MSE between the two outputs.
    """
    if getattr(student_out, "start_logits", None) is not None:
        mask = batch.get("attention_mask")
        return (_positions_ce(student_out.start_logits, teacher_out.start_logits, temperature, mask)
                + _positions_ce(student_out.end_logits, teacher_out.end_logits, temperature, mask))
    student, teacher = student_out.logits, teacher_out.logits
    if student.shape[-1] == 1:
        return F.mse_loss(student.float(), teacher.float())
    if student.dim() == 3:
        labels, mask = batch.get("labels"), batch.get("attention_mask")
        valid = labels != -100 if labels is not None else (mask.bool() if mask is not None else None)
        return soft_cross_entropy(student, teacher, temperature, valid)
    return soft_cross_entropy(student, teacher, temperature)


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the real tokens only.

    Args:
        student: (B, T, D) projected student hidden states.
        teacher: (B, T, D) teacher hidden states.
        attention_mask: (B, T) 1 for real tokens, 0 for padding (None: all tokens).
    """
    diff = (student.float() - teacher.float()).pow(2).mean(-1)  # (B, T)
    if attention_mask is None:
        return diff.mean()
    valid = attention_mask.to(diff.dtype)
    return (diff * valid).sum() / valid.sum().clamp_min(1.0)


def default_layer_mapping(student_layers: int, teacher_layers: int) -> tuple[tuple[int, int], ...]:
    """Every second student layer, with 0 (embeddings) and the last one: the paper's {0, 2, ..., 12}.

    Student layer i maps to teacher layer round(i * teacher_layers / student_layers), which is i
    itself for equal depths (6 layers: 0, 2, 4, 6).
    """
    layers = sorted(set(range(0, student_layers + 1, 2)) | {student_layers})
    return tuple((i, round(i * teacher_layers / student_layers)) for i in layers)


def parse_layer_mapping(spec: str, student_layers: int, teacher_layers: int) -> tuple[tuple[int, int], ...]:
    """A layer mapping from a setting string.

    ``"auto"`` is ``default_layer_mapping``; ``"0,2,4,6"`` maps each student layer to the same
    teacher layer; ``"0:0,3:6"`` gives explicit student:teacher pairs. Layer 0 is the embeddings.
    """
    if spec.strip() == "auto":
        return default_layer_mapping(student_layers, teacher_layers)
    pairs = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        s, _, t = item.partition(":")
        try:
            pair = (int(s), int(t or s))
        except ValueError:
            raise GrainError(f"layer_mapping item {item!r} is not 'i' or 'i:j'; write e.g. '0,2,4,6' or '0:0,3:6'") from None
        if not (0 <= pair[0] <= student_layers and 0 <= pair[1] <= teacher_layers):
            raise GrainError(f"layer_mapping pair {item!r} is out of range: the student has layers 0..{student_layers}, "
                             f"the teacher 0..{teacher_layers}")
        pairs.append(pair)
    if not pairs:
        raise GrainError("layer_mapping is empty; use 'auto' or a list such as '0,2,4,6'")
    return tuple(pairs)


class HiddenProjections(nn.Module):
    """One Linear (with bias, identity-initialised) per mapped student layer (spec §5).

    They are trained with the student and discarded afterwards.
    """

    def __init__(self, mapping: tuple[tuple[int, int], ...], student_hidden: int, teacher_hidden: int):
        super().__init__()
        self.mapping = tuple(mapping)
        self.proj = nn.ModuleList(nn.Linear(student_hidden, teacher_hidden) for _ in self.mapping)
        for layer in self.proj:
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, student_hidden: tuple[torch.Tensor, ...], teacher_hidden: tuple[torch.Tensor, ...],
                attention_mask: torch.Tensor | None) -> torch.Tensor:
        """L_Hidden: the sum over pairs of masked MSE(proj_i(H_i^S), H_j^T) (spec §5, Eq. 7)."""
        loss = student_hidden[0].new_zeros((), dtype=torch.float32)
        for proj, (i, j) in zip(self.proj, self.mapping):
            loss = loss + masked_mse(proj(student_hidden[i]), teacher_hidden[j], attention_mask)
        return loss
