"""Cost of a pruning step against a plain distillation step, on the same batch.

A pruning step is what GRAIN does inside the pruning window: forward of teacher and student, the
logit-loss backward for the scores (gradient separation), the backward of the summed loss for the
weights, scores (structure regularisation, moving average), global selection, clipping and AdamW.
A plain distillation step is the same without the score pass, the scores and the selection (the
fixed-structure phase). The two are timed alternately on one batch; the medians are compared.

    python benchmarks/prune_step.py                      # minilm, batch 32, 64 tokens, fp32
    python benchmarks/prune_step.py --model random-bert-base --seq-len 128 --repeats 5

Prints a small table and, with --json, writes the figures to a file.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def build(model_name: str):
    import grain
    from grain.modeling import GrainConfig, GrainForSequenceClassification

    if model_name.startswith("random-"):
        sizes = {"random-minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                       intermediate_size=1536),
                 "random-bert-base": dict()}[model_name]
        config = GrainConfig(num_labels=2, **sizes)
        torch.manual_seed(0)
        return GrainForSequenceClassification(config), GrainForSequenceClassification(config)
    teacher = grain.from_pretrained(model_name, task="sequence-classification", num_labels=2)
    student = grain.from_pretrained(model_name, task="sequence-classification", num_labels=2)
    return student, teacher


def main(argv=None) -> dict:
    from grain.distill import HiddenProjections, parse_layer_mapping
    from grain.optim import build_optimizer, build_scheduler
    from grain.prune import PruneSettings, PruningState, distillation_step, variant_settings
    from grain.train import optimizer_step

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="a model name/dir, random-minilm or random-bert-base")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10, help="timed pairs")
    parser.add_argument("--warmup", type=int, default=2, help="untimed pairs first")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--variant", default="grain", help="a grain.prune.VARIANTS name (e.g. no-gradsep)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine; "
                             "use with --threads 1)")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    student, teacher = build(args.model)
    config = student.config
    settings = variant_settings(args.variant, PruneSettings(precision=args.precision))
    mapping = parse_layer_mapping("auto", config.num_hidden_layers, teacher.config.num_hidden_layers)
    projections = HiddenProjections(mapping, config.hidden_size, teacher.config.hidden_size).to(args.device)
    student.to(args.device).train()
    teacher.to(args.device).eval().requires_grad_(False)
    optimizer = build_optimizer(student, settings.learning_rate, settings.weight_decay, settings.adam_eps,
                                constant_params=projections.parameters())
    scheduler = build_scheduler(optimizer, 0, 10_000)
    total = 10 * (args.repeats + args.warmup)  # every timed pruning step lies inside the pruning window
    state = PruningState(config, settings, 0.1, total, seed=0, device=args.device)
    params = [p for p in student.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, config.vocab_size, (args.batch_size, args.seq_len), generator=g),
             "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long)}
    batch = {k: v.to(args.device) for k, v in batch.items()}
    scaler = torch.amp.GradScaler("cuda") if args.precision == "fp16" else None

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def plain_step(i: int) -> None:
        distillation_step(student, teacher, projections, batch, state.masks, settings, score=False, scaler=scaler,
                          device=args.device)
        optimizer_step(params, optimizer, scaler, settings.max_grad_norm)
        scheduler.step()

    def pruning_step(i: int) -> None:
        out = distillation_step(student, teacher, projections, batch, state.masks, settings, score=True,
                                scaler=scaler, device=args.device)
        step_scores = state.step_scores(out.gradients)
        if step_scores is not None:
            state.update(step_scores)
        state.prune(2 * total // 10 + i)  # a step inside the window: the density target moves each time
        optimizer_step(params, optimizer, scaler, settings.max_grad_norm)
        scheduler.step()

    clock = time.perf_counter if args.clock == "wall" else time.process_time

    def timed(fn, i: int) -> float:
        sync()
        start = clock()
        fn(i)
        sync()
        return clock() - start

    plain, pruning = [], []
    for i in range(args.warmup + args.repeats):
        pair = [(plain_step, plain), (pruning_step, pruning)]
        if i % 2:
            pair.reverse()  # alternate which goes first
        for fn, sink in pair:
            seconds = timed(fn, i)
            if i >= args.warmup:
                sink.append(seconds)
    result = {
        "model": args.model, "variant": args.variant, "device": args.device, "precision": args.precision,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len, "repeats": args.repeats, "threads": torch.get_num_threads(), "clock": args.clock,
        "plain_median_s": statistics.median(plain), "pruning_median_s": statistics.median(pruning),
        "ratio": statistics.median(pruning) / statistics.median(plain),
        "plain_s": plain, "pruning_s": pruning, "torch": torch.__version__, "python": platform.python_version(),
        "density_after": float(state.masks.ffn.mean()),
    }
    print(f"{'step':<22}{'median s':>10}")
    print(f"{'plain distillation':<22}{result['plain_median_s']:>10.3f}")
    print(f"{'pruning (GS+scores)':<22}{result['pruning_median_s']:>10.3f}")
    print(f"ratio pruning / plain: {result['ratio']:.3f}  ({args.model}, {args.variant}, {args.device}, {args.precision}, "
          f"batch {args.batch_size} x {args.seq_len}, {args.repeats} pairs, {args.clock} clock, "
          f"{torch.get_num_threads()} threads)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
