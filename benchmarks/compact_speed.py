"""Compact-model latency at the paper's Table 6 structures (5% density), side by side in one run.

For each structure (QNLI, alpha 0.3 and alpha 0 by default; spec §10.5) this builds BERT-base-shaped
models with random weights and times, interleaved in one process on the same random token ids:

* teacher   -- the dense BERT-base encoder;
* loop      -- the paper's compact execution: separate Q/K/V projections, a Python loop over heads;
* grain     -- our compact execution (attention_impl="auto");
* uniform   -- a uniform model with the compact model's encoder parameter count (every head the same
               size): what the non-uniform heads cost;
* with --alternatives also: padded (one attention call over every head padded to the layer's widest)
  and width (one call per head width, every head zero-padded to it).

It prints latency (p50, mean, p90), the speed-up over the teacher, the MAC ratio and how much of it
the speed-up reaches. Run from the repository root:

    python benchmarks/compact_speed.py --threads 2 --batch 32 --length 128 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from grain.bench import compare, flops, format_table, model_config, random_inputs, table6_sizes, uniform_sizes
from grain.modeling import GrainConfig, GrainModel


def build(config: GrainConfig, seed: int, scheme: str | None = None) -> GrainModel:
    torch.manual_seed(seed)
    model = GrainModel(config, add_pooling_layer=False).eval()
    for layer in model.encoder.layer:
        layer.attention.self.scheme = scheme  # None: what attention_impl says
    return model


def structure_models(task: str, alpha: float, args) -> dict[str, GrainModel]:
    base = GrainConfig()
    sizes = table6_sizes(task, alpha, seed=args.seed)
    models = {"loop": build(model_config(base, sizes, attention_impl="loop"), args.seed)}
    models["grain"] = build(model_config(base, sizes), args.seed)
    models["uniform"] = build(model_config(base, uniform_sizes(models["grain"].config)), args.seed + 1)
    if args.alternatives:
        models["padded"] = build(model_config(base, sizes, attention_impl="padded"), args.seed)
        models["width"] = build(model_config(base, sizes), args.seed, "width")
    return models


def check_equal(models: dict[str, GrainModel], inputs: dict) -> float:
    """Largest |output - loop output| over the compact models (same random weights)."""
    with torch.inference_mode():
        expected = models["loop"](**inputs, output_hidden_states=False).last_hidden_state
        return max(float((m(**inputs, output_hidden_states=False).last_hidden_state - expected).abs().max())
                   for name, m in models.items() if name not in ("loop", "uniform", "teacher"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="qnli", help="Table 6 task (default: %(default)s)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.3, 0.0], help="StructReg alphas")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--alternatives", action="store_true", help="also time the execution schemes we did not choose")
    parser.add_argument("--min-utilisation", type=float, default=0.8,
                        help="drop rounds disturbed by other processes (CPU time / (wall x threads) below this; 0: keep all)")
    parser.add_argument("--max-rounds", type=int, default=200, help="give up after this many rounds")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or process CPU time (with --threads 1 on a shared machine)")
    parser.add_argument("--json", help="also write every report to this file")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    teacher = build(GrainConfig(), args.seed).to(args.device, dtype)
    inputs = random_inputs(teacher.config, args.batch, args.length, args.seed, args.device)
    dense_macs = flops(teacher.config, args.batch, args.length)["total"]
    reports = {}
    print(f"torch {torch.__version__}, {args.threads} threads, {args.device}, {args.dtype}, batch {args.batch} x "
          f"length {args.length}, {args.clock} clock, medians of {args.repeats} interleaved rounds after {args.warmup} "
          f"warm-up rounds; "
          f"speed-up = teacher p50 / model p50, paired = median of per-round ratios")
    for alpha in args.alphas:
        models = {k: m.to(args.device, dtype) for k, m in structure_models(args.task, alpha, args).items()}
        config = models["grain"].config
        heads = sum(1 for vo in config.vo_sizes for b in vo if b > 0)
        macs = flops(config, args.batch, args.length)
        diff = check_equal(models, inputs)
        report = compare({"teacher": teacher, **models}, inputs, "teacher", "grain", args.warmup, args.repeats,
                         args.threads, args.min_utilisation or None, args.max_rounds, args.clock)
        reports[f"{args.task}-alpha{alpha}"] = report
        title = (f"\n{args.task} alpha {alpha}: {heads} heads, {sum(map(sum, config.qk_sizes)) / heads:.1f} query / "
                 f"{sum(map(sum, config.vo_sizes)) / heads:.1f} value units per head, "
                 f"{sum(config.ffn_sizes) / len(config.ffn_sizes):.1f} FFN neurons per layer; MAC ratio "
                 f"{dense_macs / macs['total']:.1f}x; padding adds " + ", ".join(
                     f"{100 * macs['padding_' + s] / macs['total']:.1f}% ({s})" for s in ("grouped", "width", "padded"))
                 + f"; max |grain - loop| {diff:.1e}")
        print(format_table(report, title))
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(reports, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
