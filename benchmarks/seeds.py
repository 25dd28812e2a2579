"""Do the chapters' headline comparisons hold across seeds? Test bits/dim of the chapters' runs for several seeds.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/seeds.py [--seeds 0 1 2] [--presets ...]

Trains each preset (default: the runs of Chapters 1-3: ``vae_fashion``, ``lvae_fashion_learned``,
``nvae_fashion_1500``) exactly as its chapter does, once per seed (``run.seed``: the initial weights,
the order of the batches and the z noise; seed 0 is the chapter's own run), into
``runs/seeds/<preset>_seed<N>/``. A run folder that holds ``results.json`` is finished and is read,
not trained again; an unfinished one resumes from its checkpoint, so the command can be stopped and
run again. After every run it rewrites ``benchmarks/seeds.json`` (each run's test negative ELBO,
CPU seconds, wall seconds and load average) and prints the table: mean, sample standard deviation
and range per preset, and the paired differences between presets (the same seed, hence the same
batches).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hvae_lib.config import override  # noqa: E402
from hvae_lib.models.presets import get_preset
from hvae_lib.training.engine import Trainer  # noqa: E402

PRESETS = {"vae_fashion": "Chapter 1: VAE", "lvae_fashion_learned": "Chapter 2: Ladder VAE",
           "nvae_fashion_1500": "Chapter 3: NVAE"}
# Names for presets that are not run by default (``--presets`` adds them).
LABELS = {**PRESETS, "nvae_fashion_1500_bare": "Chapter 4: NVAE without its remedies"}


def run_one(preset: str, seed: int, runs: Path) -> dict:
    """Train (or resume, or read) one preset at one seed; its test bits/dim and what it cost."""
    run_dir = runs / f"{preset}_seed{seed}"
    results = run_dir / "results.json"
    timing = run_dir / "timing.json"
    if results.exists():
        record = json.loads(results.read_text())
        cost = json.loads(timing.read_text()) if timing.exists() else {}
        return {"test_bpd": record["test_bpd"], "test_neg_elbo_nats": record["test_neg_elbo_nats"], **cost}
    config = override(get_preset(preset), {"seed": seed, "quiet": True})
    cpu, wall = time.process_time(), time.perf_counter()
    trainer = Trainer(config, run_dir, resume=True)
    resumed_at = trainer.step
    record = trainer.fit()
    cost = {"cpu_s": round(time.process_time() - cpu, 1), "wall_s": round(time.perf_counter() - wall, 1),
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()], "resumed_at_step": resumed_at,
            "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None}
    timing.write_text(json.dumps(cost, indent=2) + "\n")
    return {"test_bpd": record["test_bpd"], "test_neg_elbo_nats": record["test_neg_elbo_nats"], **cost}


def summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def table(results: dict, seeds: list[int]) -> str:
    """Markdown: one row per preset (bits/dim per seed, mean, std, range), then the paired differences."""
    done = {p: {s: r for s, r in runs.items() if r is not None} for p, runs in results.items()}
    lines = ["| model (preset) | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std | range |",
             "|---|" + "---:|" * (len(seeds) + 3)]
    for preset, runs in done.items():
        values = [runs[s]["test_bpd"] for s in seeds if s in runs]
        cells = [f"{runs[s]['test_bpd']:.3f}" if s in runs else "" for s in seeds]
        if values:
            st = summary(values)
            cells += [f"{st['mean']:.3f}", f"{st['std']:.3f}", f"{st['min']:.3f} to {st['max']:.3f}"]
        else:
            cells += ["", "", ""]
        lines.append(f"| {LABELS.get(preset, preset)} (`{preset}`) | " + " | ".join(cells) + " |")
    names = list(done)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = [s for s in seeds if s in done[a] and s in done[b]]
            if not common:
                continue
            diffs = [done[b][s]["test_bpd"] - done[a][s]["test_bpd"] for s in common]
            st = summary(diffs)
            cells = [f"{done[b][s]['test_bpd'] - done[a][s]['test_bpd']:+.3f}" if s in common else "" for s in seeds]
            lines.append(f"| `{b}` − `{a}` | " + " | ".join(cells)
                         + f" | {st['mean']:+.3f} | {st['std']:.3f} | {st['min']:+.3f} to {st['max']:+.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--presets", nargs="+", default=list(PRESETS))
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "seeds", help="where the run folders go")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "seeds.json")
    args = p.parse_args(argv)
    results = {preset: {} for preset in args.presets}
    for seed in args.seeds:  # seed by seed, so a partial table already compares the models
        for preset in args.presets:
            start = time.perf_counter()
            results[preset][seed] = run_one(preset, seed, args.runs)
            print(f"{preset} seed {seed}: {results[preset][seed]['test_bpd']:.4f} bits/dim "
                  f"({time.perf_counter() - start:.0f} s; load {os.getloadavg()[0]:.2f})", flush=True)
            stats = {pr: summary([r["test_bpd"] for r in runs.values()]) for pr, runs in results.items() if runs}
            args.results.write_text(json.dumps({"seeds": args.seeds, "runs": results, "summary": stats}, indent=2) + "\n")
    print(table(results, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
