"""The published numbers of the GRAIN paper, which the tables print beside ours.

Source: Ziqing Yang, Yiming Cui, Xin Yao and Shijin Wang. 2023. *Gradient-based Intra-attention
Pruning on Pre-trained Language Models.* In Proceedings of the 61st Annual Meeting of the
Association for Computational Linguistics (Volume 1: Long Papers), pages 2775-2790.
https://aclanthology.org/2023.acl-long.156/ (arXiv:2212.07634). Tables 1, 2, 3, 6 and 7; every
score is the mean of three runs; GLUE and SQuAD on dev, CoNLL-2003 on test (spec §9, §10).

A row names the `variant` of ours that reproduces it (None for a baseline we do not run) and the
teacher `family`; `density` None marks a teacher row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

CITATION = (
    "Yang, Cui, Yao and Wang. Gradient-based Intra-attention Pruning on Pre-trained Language Models. "
    "ACL 2023, pp. 2775-2790. https://aclanthology.org/2023.acl-long.156/"
)
BIBTEX = """@inproceedings{yang-etal-2023-gradient,
  title = {Gradient-based Intra-attention Pruning on Pre-trained Language Models},
  author = {Yang, Ziqing and Cui, Yiming and Yao, Xin and Wang, Shijin},
  booktitle = {Proceedings of the 61st Annual Meeting of the Association for Computational Linguistics (Volume 1: Long Papers)},
  pages = {2775--2790},
  year = {2023},
  url = {https://aclanthology.org/2023.acl-long.156/}
}"""


@dataclass(frozen=True)
class Column:
    """One score column of the paper: our `task` and the key in `grain.evaluation.evaluate`'s result."""

    label: str
    task: str
    metric: str


COLUMNS: tuple[Column, ...] = (
    Column("QNLI", "qnli", "accuracy"),
    Column("MNLI-m", "mnli", "accuracy"),
    Column("MNLI-mm", "mnli", "accuracy_mismatched"),
    Column("QQP", "qqp", "accuracy"),
    Column("SST-2", "sst2", "accuracy"),
    Column("SQuAD F1", "squad", "f1"),
    Column("SQuAD EM", "squad", "exact_match"),
    Column("CoNLL F1", "conll2003", "f1"),
)
TASK_LABELS = {"qnli": "QNLI", "mnli": "MNLI", "qqp": "QQP", "sst2": "SST-2", "squad": "SQuAD", "conll2003": "CoNLL-03"}


@dataclass(frozen=True)
class Row:
    """One row of a paper table."""

    label: str
    values: Mapping[str, float]  # column label -> score
    variant: str | None = None
    density: float | None = None
    family: str = "bert"
    model_size: str = ""  # encoder size as printed, e.g. "4.3M (5.0%)"
    total_size: str = ""  # with embeddings
    units: str = ""  # Table 3: (FFN density, attention density)


def _row(label: str, scores: tuple[float | None, ...], columns: tuple[str, ...], **kw) -> Row:
    values = {c: s for c, s in zip(columns, scores, strict=True) if s is not None}
    return Row(label, MappingProxyType(values), **kw)


_ALL = tuple(c.label for c in COLUMNS)
_BERT_TEACHER = (91.9, 84.7, 85.0, 91.2, 92.9, 88.6, 81.1, 91.2)

# Table 1: about 5% and 3% encoder density, BERT-base teacher. † re-implemented by the GRAIN authors,
# § quoted from the original papers, ‡ averaged without QQP.
TABLE1: tuple[Row, ...] = (
    _row("BERT-base (teacher)", _BERT_TEACHER, _ALL, variant="teacher", model_size="85.1M", total_size="108.9M"),
    _row("TinyBERT4 †", (87.4, 80.9, 81.9, 89.9, 90.9, 81.6, 71.9, 84.9), _ALL, density=0.05,
         model_size="4.7M (5.5%)", total_size="14.6M"),
    _row("AutoTinyBERT §", (88.0, 79.4, None, 87.7, 88.8, 84.6, None, None), _ALL, density=0.05,
         model_size="4.3M (5.0%)", total_size="14.5M"),
    _row("Block Pruning †", (83.0, 78.9, 78.6, 89.2, 86.1, 80.7, 71.0, 84.0), _ALL, density=0.05,
         model_size="4.6M (5.4%)", total_size="28.8M"),
    _row("CoFi (reimpl.) †", (85.3, 79.8, 79.6, 89.8, 89.8, 79.0, 69.2, 85.0), _ALL, density=0.05,
         model_size="4.2M (4.9%)", total_size="28.2M"),
    _row("CoFi §", (86.1, 80.6, 80.7, 90.1, 90.6, 82.6, None, None), _ALL, density=0.05,
         model_size="4.7M (5.5%) ‡", total_size="29.0M ‡"),
    _row("GRAIN", (89.0, 82.2, 82.5, 90.4, 91.4, 83.6, 73.7, 88.3), _ALL, variant="grain", density=0.05,
         model_size="4.3M (5.0%)", total_size="10.7M"),
    _row("GRAIN w/o EF", (89.1, 82.4, 82.2, 90.5, 91.6, 83.4, 73.2, 88.3), _ALL, variant="no-ef", density=0.05,
         model_size="4.3M (5.0%)", total_size="28.1M"),
    _row("GRAIN", (87.8, 80.7, 81.1, 90.0, 90.4, 79.5, 68.4, 86.8), _ALL, variant="grain", density=0.03,
         model_size="2.6M (3.0%)", total_size="9.0M"),
    _row("GRAIN w/o EF", (87.6, 81.0, 81.2, 90.2, 91.0, 79.0, 67.3, 87.2), _ALL, variant="no-ef", density=0.03,
         model_size="2.6M (3.0%)", total_size="26.4M"),
)

# Table 7: GRAIN across densities with a BERT-base and a RoBERTa-base (GRAIN-R) teacher.
TABLE7: tuple[Row, ...] = (
    _row("BERT-base (teacher)", _BERT_TEACHER, _ALL, variant="teacher", model_size="85.1M", total_size="108.9M"),
    _row("RoBERTa-base (teacher)", (93.0, 87.7, 87.5, 91.7, 94.7, 91.5, 84.9, 92.1), _ALL, variant="teacher",
         family="roberta", model_size="85.1M", total_size="124.0M"),
    _row("GRAIN", (91.2, 84.3, 84.2, 91.0, 92.0, 87.8, 79.9, 90.4), _ALL, variant="grain", density=0.2,
         model_size="17M", total_size="23.4M"),
    _row("GRAIN-R", (91.9, 86.8, 86.6, 91.6, 93.1, 89.4, 81.6, 91.2), _ALL, variant="grain", density=0.2,
         family="roberta", model_size="17M", total_size="27.2M"),
    _row("GRAIN", (90.2, 83.4, 83.5, 90.7, 91.9, 86.4, 77.7, 89.7), _ALL, variant="grain", density=0.1,
         model_size="8.5M", total_size="14.9M"),
    _row("GRAIN-R", (90.9, 85.0, 85.0, 91.0, 92.2, 86.5, 77.6, 90.7), _ALL, variant="grain", density=0.1,
         family="roberta", model_size="8.5M", total_size="18.7M"),
    _row("GRAIN", (89.0, 82.2, 82.5, 90.4, 91.4, 83.6, 73.7, 88.3), _ALL, variant="grain", density=0.05,
         model_size="4.3M", total_size="10.7M"),
    _row("GRAIN-R", (89.4, 83.1, 83.0, 90.3, 91.6, 82.4, 71.9, 89.7), _ALL, variant="grain", density=0.05,
         family="roberta", model_size="4.3M", total_size="14.5M"),
    _row("GRAIN", (87.8, 80.7, 81.1, 90.0, 90.4, 79.5, 68.4, 86.8), _ALL, variant="grain", density=0.03,
         model_size="2.6M", total_size="9.0M"),
)

# Table 2: ablations at 5% density. The rows after "GRAIN w/o EF" remove components cumulatively
# from it (spec §10.3 reads them so).
_T2 = ("QNLI", "SST-2", "SQuAD F1")
TABLE2: tuple[Row, ...] = (
    _row("GRAIN", (89.0, 91.4, 83.6), _T2, variant="grain", density=0.05),
    _row("GRAIN w/o EF", (89.1, 91.6, 83.4), _T2, variant="no-ef", density=0.05),
    _row("- StructReg", (89.4, 92.2, 83.1), _T2, variant="no-structreg", density=0.05),
    _row("- GradSep", (89.3, 92.0, 82.8), _T2, variant="no-gradsep", density=0.05),
    _row("- Hidden Layer Loss", (86.1, 88.1, 80.3), _T2, variant="no-hidden", density=0.05),
    _row("- Importance Scores (random)", (82.3, 88.0, 65.7), _T2, variant="random-scores", density=0.05),
)

# Table 3: intra-attention units vs whole heads at 5% density (StructReg off); `units` is the
# (FFN density, attention density) split. The Intra+FFN split is 7.9% on QNLI and 8.0% on SQuAD.
_T3 = ("QNLI", "SQuAD F1")
TABLE3: tuple[Row, ...] = (
    _row("Intra+FFN", (89.0, 83.6), _T3, variant="grain", density=0.05, units="(3.5%, 7.9% / 8.0%)"),
    _row("Heads+FFN", (87.3, 77.3), _T3, variant="heads-ffn", density=0.05, units="(5.0%, 5.0%)"),
    _row("Heads+FFN", (88.2, 79.2), _T3, variant="heads-ffn", density=0.05, units="(3.75%, 7.5%)"),
    _row("Heads+FFN", (88.5, 81.4), _T3, variant="heads-ffn", density=0.05, units="(3.0%, 9.0%)"),
    _row("Heads+FFN", (88.5, 80.9), _T3, variant="heads-ffn", density=0.05, units="(2.5%, 10%)"),
    _row("Heads+FFN", (88.2, 80.8), _T3, variant="heads-ffn", density=0.05, units="(1.5%, 12%)"),
)

# Table 6: structures at 5% density. StructReg alpha = 0 is our `no-structreg`, alpha = 0.3 `grain`.
# The keys are those of `grain.accounting.structure`.
STRUCTURE_STATS: tuple[str, ...] = ("attention_layers", "heads", "mean_qk_units_per_head", "mean_vo_units_per_head",
                                    "mean_ffn_neurons_per_layer")
STRUCTURE_LABELS = {
    "attention_layers": "MHA layers", "heads": "heads", "mean_qk_units_per_head": "query units/head",
    "mean_vo_units_per_head": "value units/head", "mean_ffn_neurons_per_layer": "FFN neurons/layer",
}


@dataclass(frozen=True)
class StructureRow:
    task: str
    alpha: float
    variant: str
    stats: Mapping[str, float] = field(default_factory=dict)


def _structure(task: str, alpha: float, stats: tuple[float, ...]) -> StructureRow:
    variant = "grain" if alpha else "no-structreg"
    return StructureRow(task, alpha, variant, MappingProxyType(dict(zip(STRUCTURE_STATS, stats, strict=True))))


TABLE6: tuple[StructureRow, ...] = (
    _structure("qnli", 0.0, (12, 95, 9.8, 8.2, 87.9)),
    _structure("qnli", 0.3, (12, 25, 28.6, 28.5, 106.1)),
    _structure("mnli", 0.0, (12, 86, 9.0, 8.6, 103.9)),
    _structure("mnli", 0.3, (11, 21, 28.8, 32.9, 122.5)),
    _structure("qqp", 0.0, (12, 93, 9.8, 8.7, 87.1)),
    _structure("qqp", 0.3, (12, 26, 27.5, 26.4, 113.5)),
    _structure("sst2", 0.0, (12, 101, 4.2, 8.9, 120.2)),
    _structure("sst2", 0.3, (11, 19, 20.5, 37.7, 138.2)),
    _structure("squad", 0.0, (12, 75, 12.8, 10.1, 87.3)),
    _structure("squad", 0.3, (12, 23, 33.0, 30.8, 108.0)),
    _structure("conll2003", 0.0, (12, 91, 6.1, 9.1, 114.5)),
    _structure("conll2003", 0.3, (9, 22, 21.4, 31.9, 132.6)),
)

# Speed (spec §8.2): BERT-base takes about 3840 ms for batch 128 x 512 tokens on an M40; GRAIN at
# 5% density runs 6-7x faster with StructReg and about 4x without. Only figures give more.
SPEEDUP_AT_5_PERCENT = MappingProxyType({"grain": (6.0, 7.0), "no-structreg": (4.0, 4.0)})
