"""Sampling cost against the data dimension D on this CPU (Chapter 7, section 4).

    .venv/bin/python benchmarks/sampling_cost.py [--sides 4 8 16 32] [--batch 8] [--repeats 5] [--threads 1]

Untrained models of each size (timing needs no training): the autoregressive MADE over D binary
pixels (D sequential passes), Proposition 1's D-layer VAE around it (D sequential prior passes),
and the Chapter 2 Ladder VAE with 4 latent layers at two resolutions (one pass of its decoder).
Passes are counted with forward hooks; times are medians of ``--repeats`` interleaved calls after
a warm-up call (``hvae_lib.models.exact.sampling_cost.sampling_cost_rows``). Prints a markdown table with the
load average, since timings on a shared machine jump.
"""
from __future__ import annotations

import argparse
import os

import torch

from hvae_lib.models.exact.sampling_cost import sampling_cost_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[4, 8, 16, 32], help="image sides; D = side^2")
    parser.add_argument("--batch", type=int, default=8, help="samples drawn per call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per model and size (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, median of {args.repeats}; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    rows = sampling_cost_rows(sides=tuple(args.sides), batch=args.batch, repeats=args.repeats)
    print("\n| model | D | stochastic layers | network passes per sample | ms per sample | load |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['D']} | {r['layers']} | {r['passes']} | {1e3 * r['seconds_per_sample']:.3f} | {r['load']:.2f} |")


if __name__ == "__main__":
    main()
