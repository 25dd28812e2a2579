"""Does NVAE train worse without the residual normal and spectral regularisation, at CPU scale? (Chapter 4)

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nvae_remedies.py [--only N ...] [--out benchmarks/nvae_remedies.json]
    python benchmarks/nvae_remedies.py --set num_channels_enc=32 lr=0.02 --steps 3000 --variant none \
        --time-limit 300 --out FILE     # one custom setting, one variant (run the variants side by side)

For each setting below (changes to ``nvae_fashion``: a higher learning rate, a deeper hierarchy,
shorter warm-ups, wider groups, smaller batches), trains two runs from the same seed and batches:
"none" (``residual_normal=False``, ``weight_decay_norm=0``: neither remedy; the BN regulariser,
which shares lambda, goes too) and "recipe" (the preset's: both on). The KL warm-up is 30% of the
run unless the setting says otherwise. Records, per run: the mean training bits/dim over the last
20 steps, the largest training bits/dim after step 50, the largest gradient norm and batch KL (nats
per image), the final KL per group, and the test negative ELBO on 10 test batches. Rows print as a
markdown table, and all of it goes to a JSON file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hvae_lib.config import override  # noqa: E402
from hvae_lib.models.presets import get_preset
from hvae_lib.training.engine import Trainer, TrainingError  # noqa: E402

# 16x16 procedural shapes instead of Fashion-MNIST, with one pre- and post-processing block (latents at 8x8 and 4x4).
SHAPES = {"name": "shapes", "resolution": 16, "num_preprocess_blocks": 1, "num_postprocess_blocks": 1, "batch_size": 32}
# The official MNIST model's cells and groups (15 with ada_groups, 20 latent channels, 2 cells per group, 3 pre- and
# post-processing cells, 10 logistics) at half its width, batches of 32: the setting that diverged once on a GPU at
# full width (RESULTS.md), at a size this CPU trains at about 2 s a step.
PAPER_CELLS = {"num_channels_enc": 16, "num_channels_dec": 16, "num_groups_per_scale": 10, "ada_groups": True,
               "num_latent_per_group": 20, "num_cell_per_cond_enc": 2, "num_cell_per_cond_dec": 2,
               "num_preprocess_cells": 3, "num_postprocess_cells": 3, "num_mix": 10, "batch_size": 32}
# (steps, changes to nvae_fashion); the order in which they were tried.
SETTINGS = [
    (150, {"lr": 0.03}),
    (150, {"lr": 0.1}),
    (150, {"lr": 0.3}),
    (150, {"lr": 0.03, "warmup_steps": 5, "kl_warmup_steps": 0}),
    (150, {"lr": 0.02, "num_groups_per_scale": 6}),
    (150, {"lr": 0.1, "num_groups_per_scale": 6, "warmup_steps": 5}),
    (150, {"lr": 0.1, "num_groups_per_scale": 6, "warmup_steps": 5, "kl_warmup_steps": 0}),
    (150, {"lr": 0.1, "num_groups_per_scale": 6, "warmup_steps": 5, "kl_warmup_steps": 0, "seed": 1}),
    (150, {"lr": 0.05, "num_groups_per_scale": 4, "num_latent_per_group": 20}),
    (150, {"num_latent_scales": 1, "num_groups_per_scale": 20}),
    (150, {"num_latent_scales": 1, "num_groups_per_scale": 20, "lr": 0.03}),
    (400, {"batch_size": 16, "lr": 0.03, "warmup_steps": 5}),
    (150, {"num_latent_scales": 1, "num_groups_per_scale": 20, "lr": 0.1, "warmup_steps": 1, "kl_warmup_steps": 0,
           "batch_size": 16}),
    (100, {"num_latent_scales": 1, "num_groups_per_scale": 20, "lr": 0.03, "warmup_steps": 1, "kl_warmup_steps": 0,
           "batch_size": 16}),
    (100, {"num_latent_scales": 1, "num_groups_per_scale": 20, "lr": 0.1, "warmup_steps": 20, "kl_warmup_steps": 0,
           "batch_size": 16}),
    # Added in the second search: wider groups and cells, fp16, and procedural shapes (noise-free
    # images, so the latents must be precise), trained for longer.
    (300, {"num_channels_enc": 16, "num_channels_dec": 16, "num_latent_per_group": 20, "num_groups_per_scale": 4,
           "batch_size": 32}),
    (300, {"num_channels_enc": 16, "num_channels_dec": 16, "num_latent_per_group": 20, "num_groups_per_scale": 4,
           "batch_size": 32, "lr": 0.03}),
    (300, {"precision": "fp16"}),
    (300, {"precision": "fp16", "lr": 0.03}),
    (3000, {**SHAPES}),
    (1500, {**SHAPES, "num_channels_enc": 16, "num_channels_dec": 16}),
    (2000, {**SHAPES, "num_groups_per_scale": 10, "num_channels_enc": 8, "num_channels_dec": 8}),
    (300, {**PAPER_CELLS, "lr": 0.03}),
    (300, {**PAPER_CELLS, "lr": 0.03, "seed": 1}),
]
VARIANTS = {"none": {"residual_normal": False, "weight_decay_norm": 0.0}, "recipe": {}}


def run(changes: dict, steps: int, out: Path, time_limit: float = 0.0) -> dict:
    """One short run of nvae_fashion with ``changes``; what it did, step by step and at the end.
    ``time_limit`` (seconds, 0: none) stops training early, after one step at least; the schedule stays
    that of ``steps``."""
    config = override(get_preset("nvae_fashion"), {"max_steps": steps, "kl_warmup_steps": int(0.3 * steps),
                                                   "eval_every": 0, "sample_every": 0, "checkpoint_every": 0,
                                                   "quiet": True, **changes})
    trainer = Trainer(config, out, resume=False)
    bpd, grad, kl, error, start = [], [], [], None, time.perf_counter()
    try:
        while trainer.step < steps and not (time_limit and bpd and time.perf_counter() - start > time_limit):
            record = trainer.train_step()
            bpd.append(record["bpd"])
            grad.append(record["grad_norm"])
            kl.append(record["kl"])
    except TrainingError as err:  # too many skipped steps in a row
        error = str(err).split(";")[0]
    curve = [round(sum(bpd[i:i + 50]) / len(bpd[i:i + 50]), 4) for i in range(0, len(bpd), 50)]
    return {"steps_done": trainer.step, "skipped": trainer.total_skips, "error": error, "train_bpd_per_50": curve,
            "last20_train_bpd": sum(bpd[-20:]) / max(1, len(bpd[-20:])), "max_train_bpd_after_50": max(bpd[50:] or [0.0]),
            "max_grad_norm": max(grad), "max_batch_kl": max(kl),
            "final_kl_per_group": [round(v, 2) for v in record["kl_per_group"].tolist()],
            "test_bpd": trainer.evaluate(10)["test_bpd"] if error is None else None,
            "seconds_per_step": (time.perf_counter() - start) / max(1, trainer.step), "load_avg": os.getloadavg()[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", type=int, nargs="*", help="indices of SETTINGS to run (default: all)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "nvae_remedies.json")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "nvae_remedies")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="run this one setting instead of the list (values "
                   "parsed as JSON when they can be: lr=0.02, precision=fp16, device=cuda)")
    p.add_argument("--steps", type=int, default=150, help="with --set: the run's length (its schedule)")
    p.add_argument("--variant", choices=list(VARIANTS), nargs="+", default=list(VARIANTS), help="which runs of each pair")
    p.add_argument("--time-limit", type=float, default=0.0, help="stop each run's training after this many seconds")
    args = p.parse_args(argv)
    settings = SETTINGS
    if args.set:
        custom = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                p.error(f"--set takes KEY=VALUE pairs, got {item!r}")
            try:
                custom[key] = json.loads(value)
            except json.JSONDecodeError:
                custom[key] = value
        settings = [(args.steps, custom)]
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    print("| setting (changes to nvae_fashion) | steps | variant | train bpd, last 20 | max train bpd after 50 "
          "| max grad norm | max batch KL | test bpd |\n|---|---:|---|---:|---:|---:|---:|---:|")
    for i, (steps, changes) in enumerate(settings):
        if args.only and i not in args.only:
            continue
        for variant in args.variant:
            r = run({**changes, **VARIANTS[variant]}, steps, args.runs / f"{i}_{variant}", args.time_limit)
            results[f"{'custom' if args.set else i}/{variant}"] = {"setting": changes, "steps": steps, "variant": variant, **r}
            args.out.write_text(json.dumps(results, indent=2) + "\n")
            test = f"{r['test_bpd']:.3f}" if r["test_bpd"] is not None else r["error"]
            print(f"| {', '.join(f'{k}={v}' for k, v in changes.items())} | {steps} | {variant} | "
                  f"{r['last20_train_bpd']:.3f} | {r['max_train_bpd_after_50']:.2f} | {r['max_grad_norm']:.3g} | "
                  f"{r['max_batch_kl']:.3g} | {test} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
