"""Dense forward latency: our encoder against transformers' BertModel, same weights, one process.

Both run BERT-base shapes with random weights on the same random token ids (no padding), in eval and
inference mode, interleaved, after a warm-up; the report is the ratio of medians (ours / theirs;
below 1 means ours is faster). Run from the repository root:

    python benchmarks/dense_vs_transformers.py --threads 2 --batch 32 --length 128 --repeats 7
"""

from __future__ import annotations

import argparse
import sys

import torch
import transformers

from grain.bench import random_inputs, summary, time_models
from grain.loading import config_from_hf, load_hf_weights
from grain.modeling import GrainModel


class HfEncoder(torch.nn.Module):
    """transformers' BertModel behind our call signature (it takes the same keyword inputs)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, output_hidden_states=False, **inputs):
        return self.model(**inputs, output_hidden_states=output_hidden_states)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--attn", default="sdpa", help="transformers attn_implementation (default: %(default)s)")
    parser.add_argument("--min-utilisation", type=float, default=0.8,
                        help="drop rounds disturbed by other processes (CPU time / (wall x threads) below this; 0: keep all)")
    parser.add_argument("--max-rounds", type=int, default=200)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or process CPU time (with --threads 1 on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = transformers.BertConfig(attn_implementation=args.attn)
    hf = transformers.BertModel(config, add_pooling_layer=False).eval()
    ours = GrainModel(config_from_hf(config.to_dict()), add_pooling_layer=False).eval()
    load_hf_weights(ours, hf.state_dict(), "transformers BertModel")
    inputs = random_inputs(ours.config, args.batch, args.length)
    with torch.inference_mode():
        a = hf(**inputs).last_hidden_state
        b = ours(**inputs, output_hidden_states=False).last_hidden_state
    timings = time_models({"grain": ours, "transformers": HfEncoder(hf)}, inputs, args.warmup, args.repeats,
                          args.min_utilisation or None, max_rounds=args.max_rounds, clock=args.clock)
    s = {k: summary(v) for k, v in timings.ms.items()}
    paired = sorted(a / b for a, b in zip(timings.ms["grain"], timings.ms["transformers"]))
    print(f"torch {torch.__version__}, transformers {transformers.__version__} ({args.attn}), {args.threads} threads, "
          f"batch {args.batch} x length {args.length}, {args.clock} clock, {len(paired)} interleaved rounds kept "
          f"({timings.dropped_rounds} dropped as disturbed); max |ours - theirs| {float((a - b).abs().max()):.1e}")
    for name, m in s.items():
        print(f"{name:<14} p50 {m['p50_ms']:8.1f} ms  mean {m['mean_ms']:8.1f} ms  p90 {m['p90_ms']:8.1f} ms")
    print(f"ours / transformers: {s['grain']['p50_ms'] / s['transformers']['p50_ms']:.3f} (ratio of medians), "
          f"{paired[len(paired) // 2]:.3f} (median of per-round ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
