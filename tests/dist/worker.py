"""Run by tests/test_distributed.py under `torch.distributed.run`: prune a tiny model data-parallel.

Usage: worker.py OUT_DIR [--max-steps N] [--resume-from WORK_DIR] [--kill-at STEP]
Writes OUT_DIR/rank{r}.pt: the masks and scores at every pruning step, and the final weights.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from grain import distributed
from grain.loggers import NullLogger
from grain.modeling import GrainConfig, GrainForSequenceClassification
from grain.prune import PruneSettings, prune_model

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
GLOBAL_BATCH = 8


def batches(epoch):
    g = torch.Generator().manual_seed(100 + epoch)
    out = []
    for _ in range(6):
        ids = torch.randint(2, 99, (GLOBAL_BATCH, 12), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                    "labels": torch.randint(0, 2, (GLOBAL_BATCH,), generator=g)})
    return out


class Kill(Exception):
    pass


class KillAt(NullLogger):
    def __init__(self, step):
        self.step = step

    def log_metrics(self, metrics, step):
        if step == self.step:
            raise Kill


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--work-dir")
    parser.add_argument("--kill-at", type=int)
    args = parser.parse_args(argv)
    env = distributed.init("cpu")
    torch.manual_seed(0)
    config = GrainConfig(**TINY)
    teacher = GrainForSequenceClassification(config).eval()
    student = GrainForSequenceClassification(config)
    settings = dataclasses.replace(PruneSettings(), max_steps=args.max_steps, batch_size=GLOBAL_BATCH, beta=0.9,
                                   checkpoint_every=5 if args.work_dir else 0, eval_every=0)
    seen = []

    def on_prune(step, state):
        seen.append({"step": step, "masks": [t.clone() for t in (state.masks.qk, state.masks.vo, state.masks.ffn)],
                     "scores": [t.clone() for t in state.scores.tensors()]})

    logger = KillAt(args.kill_at) if args.kill_at else None
    try:
        result = prune_model(student, teacher, batches, settings, 0.3, seed=1, env=env, on_prune=on_prune,
                             work_dir=args.work_dir, logger=logger)
    except Kill:
        return 3
    Path(args.out).mkdir(parents=True, exist_ok=True)
    torch.save({"world_size": env.world_size, "pruning_steps": seen,
                "weights": {k: v.clone() for k, v in result.model.state_dict().items()},
                "masks": [result.masks.qk, result.masks.vo, result.masks.ffn]},
               Path(args.out) / f"rank{env.rank}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
