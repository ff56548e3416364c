"""GRAIN encoder: BERT and RoBERTa (post-LN) with per-head and per-layer sizes.

One module family is the dense model, the masked model (``masks`` passed to ``forward``) and the
compact model (sizes in the config). This file is standalone -- it imports only torch and
transformers -- because it is copied into every saved model directory as ``modeling_grain.py``
(referenced by ``auto_map``), so a compact model loads with plain transformers.

Spec references (method/grain-spec.md): units §1.1, degenerate heads and empty sub-layers §7,
attention scaled by the ORIGINAL head size §8.1.

Shapes: B batch, T tokens, D hidden, H heads of a layer, A/V query/key and value/output units of a
layer (sums over its heads), dq/dv the largest per-head sizes in the layer.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

FAMILIES = ("bert", "roberta")
ATTENTION_IMPLS = ("auto", "padded", "loop")
AUTO_MAP = {
    "AutoConfig": "modeling_grain.GrainConfig",
    "AutoModel": "modeling_grain.GrainModel",
    "AutoModelForSequenceClassification": "modeling_grain.GrainForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_grain.GrainForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_grain.GrainForQuestionAnswering",
}


class GrainConfig(PretrainedConfig):
    """Configuration of a GRAIN encoder. Every size that pruning changes lives here.

    Attributes beyond BERT's:
        family: "bert" or "roberta" (RoBERTa offsets position ids by the padding index).
        head_size: the original head size; attention is scaled by 1/sqrt(head_size) (spec §8.1).
        qk_sizes: per layer, per head, the number of query/key units.
        vo_sizes: per layer, per head, the number of value/output units (same heads as qk_sizes).
        ffn_sizes: per layer, the number of FFN neurons.
        embedding_rank: rank r of factorised word embeddings (spec §6.3), or None.
        attention_impl: how layers with unequal heads run: "padded" (one batched attention over heads
            zero-padded to the layer's largest head; exact), "loop" (one head at a time, the paper's
            way) or "auto" (padded).
    """

    model_type = "grain"

    family: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    classifier_dropout: float | None = None
    head_size: int | None = None
    qk_sizes: list | None = None
    vo_sizes: list | None = None
    ffn_sizes: list | None = None
    embedding_rank: int | None = None
    attention_impl: str = "auto"
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.head_size is None:
            self.head_size = self.hidden_size // self.num_attention_heads
        layers, heads = self.num_hidden_layers, self.num_attention_heads
        if self.qk_sizes is None:
            self.qk_sizes = [[self.head_size] * heads for _ in range(layers)]
        if self.vo_sizes is None:
            self.vo_sizes = [[self.head_size] * heads for _ in range(layers)]
        if self.ffn_sizes is None:
            self.ffn_sizes = [self.intermediate_size] * layers
        self.qk_sizes = [[int(s) for s in layer] for layer in self.qk_sizes]
        self.vo_sizes = [[int(s) for s in layer] for layer in self.vo_sizes]
        self.ffn_sizes = [int(s) for s in self.ffn_sizes]
        super().__post_init__(**kwargs)
        self.check_sizes()

    def check_sizes(self) -> None:
        """Raise ValueError (one line) when the size lists disagree with each other."""
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
        n = self.num_hidden_layers
        for name in ("qk_sizes", "vo_sizes", "ffn_sizes"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"config.{name} has {len(getattr(self, name))} layers, expected {n}")
        for i, (qk, vo) in enumerate(zip(self.qk_sizes, self.vo_sizes)):
            if len(qk) != len(vo):
                raise ValueError(f"layer {i}: {len(qk)} query/key head sizes but {len(vo)} value/output sizes")
            if any(s < 0 for s in qk + vo) or self.ffn_sizes[i] < 0:
                raise ValueError(f"layer {i}: sizes must be >= 0")

    @property
    def is_dense(self) -> bool:
        """True when every layer has the full, uniform layout (masks apply only then)."""
        full = [self.head_size] * self.num_attention_heads
        return (
            all(qk == full for qk in self.qk_sizes)
            and all(vo == full for vo in self.vo_sizes)
            and all(f == self.intermediate_size for f in self.ffn_sizes)
        )


@dataclass
class GrainOutput(ModelOutput):
    """Outputs of every GRAIN model; fields a head does not produce stay None."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class GrainEmbeddings(nn.Module):
    """Word (optionally factorised), position and token-type embeddings, then LayerNorm."""

    def __init__(self, config: GrainConfig):
        super().__init__()
        rank = config.embedding_rank
        self.family = config.family
        self.padding_idx = config.pad_token_id if config.pad_token_id is not None else 0
        self.word_embeddings = nn.Embedding(config.vocab_size, rank or config.hidden_size, padding_idx=config.pad_token_id)
        self.word_projection = nn.Linear(rank, config.hidden_size, bias=False) if rank else None
        pos_pad = self.padding_idx if config.family == "roberta" else None
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size, padding_idx=pos_pad)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.family == "roberta":  # positions count non-pad tokens, starting after the padding index
            not_pad = input_ids.ne(self.padding_idx).int()
            return (torch.cumsum(not_pad, dim=1) * not_pad).long() + self.padding_idx
        return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        words = self.word_embeddings(input_ids)
        if self.word_projection is not None:
            words = self.word_projection(words)  # (B, T, r) -> (B, T, D)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = words + self.token_type_embeddings(token_type_ids) + self.position_embeddings(self.position_ids(input_ids))
        return self.dropout(self.LayerNorm(x))


def _linear(n_in: int, n_out: int, bias: bool = True) -> nn.Linear:
    """nn.Linear that accepts zero-sized sides (emptied heads and sub-layers) without a warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(n_in, n_out, bias=bias)


def _head_layout(sizes: list[int], width: int) -> list[int]:
    """Positions of each head's units inside a zero-padded (heads x width) layout."""
    return [h * width + i for h, s in enumerate(sizes) for i in range(s)]


class GrainSelfAttention(nn.Module):
    """Multi-head attention whose heads have their own query/key and value/output sizes.

    A head with no query/key units has all-zero scores and so attends uniformly over non-pad tokens
    (spec §7). Heads of equal size run as one scaled_dot_product_attention; unequal heads are
    zero-padded to the layer's largest head inside one fused projection (exact: zero query/key
    dimensions add nothing to a score, zero value dimensions are dropped again), or, with
    attention_impl="loop", run one at a time as in the paper's code.
    """

    def __init__(self, config: GrainConfig, layer_idx: int):
        super().__init__()
        self.qk_sizes = list(config.qk_sizes[layer_idx])
        self.vo_sizes = list(config.vo_sizes[layer_idx])
        self.num_heads = len(self.vo_sizes)
        self.qk_total, self.vo_total = sum(self.qk_sizes), sum(self.vo_sizes)
        self.scale = 1.0 / math.sqrt(config.head_size)
        self.dropout_p = config.attention_probs_dropout_prob
        self.impl = config.attention_impl
        self.query = _linear(config.hidden_size, self.qk_total)
        self.key = _linear(config.hidden_size, self.qk_total)
        self.value = _linear(config.hidden_size, self.vo_total)
        self.qk_width = max(self.qk_sizes + [1])
        self.vo_width = max(self.vo_sizes + [1])
        self.uniform = len(set(self.qk_sizes)) == 1 and len(set(self.vo_sizes)) == 1 and self.qk_sizes[0] > 0
        padded_index, context_index = self.layout()
        self.register_buffer("padded_index", padded_index, persistent=False)
        self.register_buffer("context_index", context_index, persistent=False)

    def layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each padded slot reads from in [q | k | v | 0], and where the real context units sit.

        The trailing zero fills the padding. Both are derived from the sizes, never saved.
        """
        heads = max(self.num_heads, 1)
        zero = 2 * self.qk_total + self.vo_total
        slots = [zero] * (heads * (2 * self.qk_width + self.vo_width))
        q_pos = _head_layout(self.qk_sizes, self.qk_width)
        v_pos = _head_layout(self.vo_sizes, self.vo_width)
        k_off, v_off = heads * self.qk_width, 2 * heads * self.qk_width
        for j, p in enumerate(q_pos):
            slots[p] = j
            slots[k_off + p] = self.qk_total + j
        for j, p in enumerate(v_pos):
            slots[v_off + p] = 2 * self.qk_total + j
        return torch.tensor(slots, dtype=torch.long), torch.tensor(v_pos, dtype=torch.long)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """One fused projection for all query, key and value rows: (B, T, D) -> (B, T, 2A + V)."""
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        return F.linear(x, weight, bias)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor | None, qk_mask=None, vo_mask=None) -> torch.Tensor:
        """Return the packed context (B, T, V) that feeds the output projection."""
        B, T, _ = x.shape
        qkv = self._project(x)
        if qk_mask is not None or vo_mask is not None:
            qkv = qkv * torch.cat([_ones(qk_mask, self.qk_total, qkv), _ones(qk_mask, self.qk_total, qkv),
                                   _ones(vo_mask, self.vo_total, qkv)])
        if self.impl == "loop":
            return self._loop(qkv, mask_bias)
        H, dq, dv = self.num_heads, self.qk_width, self.vo_width
        if self.uniform:
            q, k, v = qkv.split([self.qk_total, self.qk_total, self.vo_total], dim=-1)
        else:
            padded = F.pad(qkv, (0, 1)).index_select(-1, self.padded_index)  # (B, T, H * (2dq + dv))
            q, k, v = padded.split([H * dq, H * dq, H * dv], dim=-1)
        q = q.view(B, T, H, dq).transpose(1, 2)  # (B, H, T, dq)
        k = k.view(B, T, H, dq).transpose(1, 2)
        v = v.view(B, T, H, dv).transpose(1, 2)  # (B, H, T, dv)
        dropout = self.dropout_p if self.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_bias, dropout_p=dropout, scale=self.scale)
        context = context.transpose(1, 2).reshape(B, T, H * dv)
        if not self.uniform:
            context = context.index_select(-1, self.context_index)  # drop the padding: (B, T, V)
        return context

    def _loop(self, qkv: torch.Tensor, mask_bias: torch.Tensor | None) -> torch.Tensor:
        """The paper's execution: one head at a time, each with its own sizes (spec §8.1)."""
        q, k, v = qkv.split([self.qk_total, self.qk_total, self.vo_total], dim=-1)
        contexts, qo, vo = [], 0, 0
        for a, b in zip(self.qk_sizes, self.vo_sizes):
            scores = q[..., qo:qo + a] @ k[..., qo:qo + a].transpose(-1, -2) * self.scale  # (B, T, T)
            if mask_bias is not None:
                scores = scores + mask_bias[:, 0]
            probs = F.dropout(scores.softmax(-1), self.dropout_p, self.training)
            contexts.append(probs @ v[..., vo:vo + b])
            qo, vo = qo + a, vo + b
        return torch.cat(contexts, dim=-1)


def _ones(mask: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    return like.new_ones(n) if mask is None else mask.to(like.dtype)


class GrainAttention(nn.Module):
    """Self-attention, output projection, residual and LayerNorm (BERT's `attention` block)."""

    def __init__(self, config: GrainConfig, layer_idx: int):
        super().__init__()
        self.self = GrainSelfAttention(config, layer_idx)
        self.output = nn.Module()
        self.output.dense = _linear(self.self.vo_total, config.hidden_size)
        self.output.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, mask_bias, qk_mask=None, vo_mask=None) -> torch.Tensor:
        dense = self.output.dense
        if self.self.num_heads == 0:  # empty sub-layer: LayerNorm(x + b_O) (spec §7)
            return self.output.LayerNorm(x + dense.bias)
        context = self.self(x, mask_bias, qk_mask, vo_mask)
        return self.output.LayerNorm(x + self.dropout(dense(context)))


class GrainLayer(nn.Module):
    """One transformer block: attention then FFN, each post-LN (BERT names)."""

    def __init__(self, config: GrainConfig, layer_idx: int):
        super().__init__()
        ffn = config.ffn_sizes[layer_idx]
        self.attention = GrainAttention(config, layer_idx)
        self.intermediate = nn.Module()
        self.intermediate.dense = _linear(config.hidden_size, ffn)
        self.output = nn.Module()
        self.output.dense = _linear(ffn, config.hidden_size)
        self.output.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.act = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.ffn_size = ffn

    def forward(self, x, mask_bias, qk_mask=None, vo_mask=None, ffn_mask=None) -> torch.Tensor:
        x = self.attention(x, mask_bias, qk_mask, vo_mask)
        if self.ffn_size == 0:  # empty sub-layer: LayerNorm(x + b2) (spec §7)
            return self.output.LayerNorm(x + self.output.dense.bias)
        h = self.act(self.intermediate.dense(x))  # (B, T, F)
        if ffn_mask is not None:
            h = h * ffn_mask.to(h.dtype)
        return self.output.LayerNorm(x + self.dropout(self.output.dense(h)))


class GrainEncoder(nn.Module):
    def __init__(self, config: GrainConfig):
        super().__init__()
        self.layer = nn.ModuleList(GrainLayer(config, i) for i in range(config.num_hidden_layers))

    def forward(self, x, mask_bias, masks=None) -> tuple[torch.Tensor, ...]:
        hidden = [x]
        for i, layer in enumerate(self.layer):
            if masks is None:
                x = layer(x, mask_bias)
            else:
                x = layer(x, mask_bias, masks.qk[i], masks.vo[i], masks.ffn[i])
            hidden.append(x)
        return tuple(hidden)


class GrainPreTrainedModel(PreTrainedModel):
    config_class = GrainConfig
    base_model_prefix = "grain"
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, GrainSelfAttention):  # derived buffers: rebuilt after meta-device init
            padded_index, context_index = module.layout()
            module.padded_index.copy_(padded_index)
            module.context_index.copy_(context_index)

    def check_masks(self, masks) -> None:
        """Masks are (layers, units) tensors and apply only to a dense-layout model."""
        if masks is None:
            return
        c = self.config
        if not c.is_dense:
            raise ValueError("masks apply to a dense-layout model; this one is compact (its sizes are in the config)")
        expected = {"qk": (c.num_hidden_layers, c.num_attention_heads * c.head_size),
                    "vo": (c.num_hidden_layers, c.num_attention_heads * c.head_size),
                    "ffn": (c.num_hidden_layers, c.intermediate_size)}
        for name, shape in expected.items():
            got = tuple(getattr(masks, name).shape)
            if got != shape:
                raise ValueError(f"masks.{name} has shape {got}, expected {shape} for this model")

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual, plus this modeling file and an auto_map, so plain transformers loads it."""
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        shutil.copyfile(__file__, os.path.join(save_directory, "modeling_grain.py"))


def _mask_bias(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, T) 1/0 padding mask -> additive bias (B, 1, 1, T): 0 where attended, dtype-min at pads."""
    if attention_mask is None:
        return None
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


class GrainModel(GrainPreTrainedModel):
    """The bare encoder: embeddings, layers and (optionally) BERT's pooler."""

    def __init__(self, config: GrainConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = GrainEmbeddings(config)
        self.encoder = GrainEncoder(config)
        self.pooler = None
        if add_pooling_layer:
            self.pooler = nn.Module()
            self.pooler.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, masks=None,
                output_hidden_states=True, **_unused) -> GrainOutput:
        self.check_masks(masks)
        x = self.embeddings(input_ids, token_type_ids)
        hidden = self.encoder(x, _mask_bias(attention_mask, x.dtype), masks)
        last = hidden[-1]
        pooled = torch.tanh(self.pooler.dense(last[:, 0])) if self.pooler is not None else None
        return GrainOutput(last_hidden_state=last, pooler_output=pooled,
                           hidden_states=hidden if output_hidden_states else None)


class GrainForSequenceClassification(GrainPreTrainedModel):
    """Sentence(-pair) classification; regression (MSE) when num_labels == 1 (STS-B)."""

    def __init__(self, config: GrainConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        bert = config.family == "bert"
        self.grain = GrainModel(config, add_pooling_layer=bert)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        if bert:
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        else:  # RoBERTa's head: dense + tanh on <s>, then out_proj
            self.classifier = nn.Module()
            self.classifier.dense = nn.Linear(config.hidden_size, config.hidden_size)
            self.classifier.out_proj = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, masks=None, labels=None,
                output_hidden_states=True, **_unused) -> GrainOutput:
        out = self.grain(input_ids, attention_mask, token_type_ids, masks)
        if isinstance(self.classifier, nn.Linear):
            logits = self.classifier(self.dropout(out.pooler_output))
        else:
            h = torch.tanh(self.classifier.dense(self.dropout(out.last_hidden_state[:, 0])))
            logits = self.classifier.out_proj(self.dropout(h))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = F.cross_entropy(logits, labels)
        return GrainOutput(loss=loss, logits=logits, last_hidden_state=out.last_hidden_state,
                           hidden_states=out.hidden_states if output_hidden_states else None)


class GrainForTokenClassification(GrainPreTrainedModel):
    """Per-token tagging (NER); label -100 marks tokens without a label."""

    def __init__(self, config: GrainConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.grain = GrainModel(config, add_pooling_layer=False)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, masks=None, labels=None,
                output_hidden_states=True, **_unused) -> GrainOutput:
        out = self.grain(input_ids, attention_mask, token_type_ids, masks)
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.num_labels), labels.reshape(-1), ignore_index=-100)
        return GrainOutput(loss=loss, logits=logits, last_hidden_state=out.last_hidden_state,
                           hidden_states=out.hidden_states if output_hidden_states else None)


class GrainForQuestionAnswering(GrainPreTrainedModel):
    """Extractive QA: start and end logits over token positions."""

    def __init__(self, config: GrainConfig):
        super().__init__(config)
        self.grain = GrainModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, masks=None, start_positions=None,
                end_positions=None, output_hidden_states=True, **_unused) -> GrainOutput:
        out = self.grain(input_ids, attention_mask, token_type_ids, masks)
        start, end = self.qa_outputs(out.last_hidden_state).unbind(-1)  # (B, T) each
        start, end = start.contiguous(), end.contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            T = start.shape[1]
            s, e = start_positions.clamp(0, T), end_positions.clamp(0, T)
            loss = (F.cross_entropy(start, s, ignore_index=T) + F.cross_entropy(end, e, ignore_index=T)) / 2
        return GrainOutput(loss=loss, start_logits=start, end_logits=end, last_hidden_state=out.last_hidden_state,
                           hidden_states=out.hidden_states if output_hidden_states else None)


TASK_CLASSES = {
    None: GrainModel,
    "sequence-classification": GrainForSequenceClassification,
    "token-classification": GrainForTokenClassification,
    "question-answering": GrainForQuestionAnswering,
}
