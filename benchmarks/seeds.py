"""Do the chapters' comparisons hold across seeds? Test bits/dim of the chapters' runs for several seeds.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/seeds.py [--seeds 0 1 2] [--presets ...] [--retrain]

Trains each preset exactly as its chapter does, once per seed (``run.seed``: the initial weights,
the order of the batches and the z noise; seed 0 is the chapter's own run), into
``runs/seeds/<preset>_seed<N>/``. ``--presets`` takes preset names and two groups:

- ``chapters`` (the default): the models of Chapters 1-3 and 6, ``vae_fashion``,
  ``lvae_fashion_learned``, ``nvae_fashion_1500`` and ``vdvae_fashion``;
- ``ch06b``: Chapter 6b's ablations, ``vdvae_fashion_deep`` and its variants (no 1/sqrt(N) scaling,
  a learned upsampler, stochastic depth 20 and 4), compared with ``vdvae_fashion_deep``; their
  results go to ``benchmarks/seeds_ch06b.json`` unless ``--results`` says otherwise, each with
  ``kl_per_layer``: the mean KL of every latent layer on the test images (the chapter's Fig. 5).

A run folder that holds ``results.json`` is finished and is read, not trained again (``--retrain``
deletes the given presets' folders for the given seeds first: after a change to a model, re-run its
seeds alone with ``--presets lvae_fashion_learned --retrain``); an unfinished one resumes from its
checkpoint, so the command can be stopped and run again. After every run it updates
``benchmarks/seeds.json`` (or ``--results``) — the presets it did not run keep their entries — and at the end prints
the table: mean, sample standard deviation and range per preset, and the paired differences (the
same seed, hence the same batches).

**One protocol for every model.** Each record holds ``test_bpd``, the engine's final test negative
ELBO (with the EMA weights where the preset keeps an EMA: VDVAE's), and ``test_bpd_raw``, the same
evaluation with the raw weights. The tables compare ``test_bpd_raw``: the other models keep no EMA,
so the raw weights are what every model is scored with.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from hvae_lib.analysis import diagnostics  # noqa: E402
from hvae_lib.config import override  # noqa: E402
from hvae_lib.config.ranges import ConfigError  # noqa: E402
from hvae_lib.models.presets import get_preset  # noqa: E402
from hvae_lib.training.engine import Trainer  # noqa: E402

PRESETS = {"vae_fashion": "Chapter 1: VAE", "lvae_fashion_learned": "Chapter 2: Ladder VAE",
           "nvae_fashion_1500": "Chapter 3: NVAE", "vdvae_fashion": "Chapter 6: VDVAE"}
ABLATIONS = {"vdvae_fashion_deep": "Chapter 6b: 69 layers", "vdvae_fashion_deep_unscaled": "without 1/sqrt(N)",
             "vdvae_fashion_deep_learned": "learned upsampler", "vdvae_fashion_deep_stoch20": "stochastic depth 20",
             "vdvae_fashion_deep_stoch4": "stochastic depth 4"}
GROUPS = {"chapters": list(PRESETS), "ch06b": list(ABLATIONS)}
BASELINES = {"vdvae_fashion_deep"}  # an ablation is compared with its baseline only, not with its siblings
# Names for presets that are not run by default (``--presets`` adds them).
LABELS = {**PRESETS, **ABLATIONS, "nvae_fashion_1500_bare": "Chapter 4: NVAE without its remedies"}


def run_one(preset: str, seed: int, runs: Path) -> dict:
    """Train (or resume, or read) one preset at one seed; its test bits/dim (the engine's and the raw
    weights') and what it cost."""
    run_dir = runs / f"{preset}_seed{seed}"
    results, timing, raw_file = run_dir / "results.json", run_dir / "timing.json", run_dir / "raw_weights.json"
    config = override(get_preset(preset), {"seed": seed, "quiet": True})
    trainer = None
    if results.exists():
        record = json.loads(results.read_text())
    else:
        cpu, wall = time.process_time(), time.perf_counter()
        trainer = Trainer(config, run_dir, resume=True)
        resumed_at = trainer.step
        record = trainer.fit()
        cost = {"cpu_s": round(time.process_time() - cpu, 1), "wall_s": round(time.perf_counter() - wall, 1),
                "load_avg_at_end": [round(x, 2) for x in os.getloadavg()], "resumed_at_step": resumed_at,
                "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None}
        timing.write_text(json.dumps(cost, indent=2) + "\n")
    ema = config.optim.ema_rate > 0
    if ema and not raw_file.exists():  # the same evaluation with the raw weights (from the checkpoint if read)
        trainer = trainer or Trainer(config, run_dir, resume=True)
        raw_file.write_text(json.dumps(trainer.evaluate(raw=True), indent=2) + "\n")
    raw = json.loads(raw_file.read_text()) if ema else record
    cost = json.loads(timing.read_text()) if timing.exists() else {}
    extra = {}
    if preset in ABLATIONS:  # where the information sits (Chapter 6b's Fig. 5), per seed
        profile_file = run_dir / "kl_per_layer.json"
        if not profile_file.exists():
            trainer = trainer or Trainer(config, run_dir, resume=True)
            profile_file.write_text(json.dumps(kl_per_layer(trainer)) + "\n")
        extra["kl_per_layer"] = json.loads(profile_file.read_text())
    return {"test_bpd": record["test_bpd"], "test_neg_elbo_nats": record["test_neg_elbo_nats"],
            "test_bpd_raw": raw["test_bpd"], "ema": ema, **cost, **extra}


def kl_per_layer(trainer: Trainer) -> list[float]:
    """The mean KL of every latent layer (nats per image, top first) of the trained raw weights on the test
    images the engine evaluates on, with the z noise seeded as Chapter 6b seeds it."""
    images = torch.stack([trainer.data.test[i][0] for i in range(len(trainer.data.test))])
    torch.manual_seed(0)
    return [round(k, 6) for k in diagnostics.kl_per_group(trainer.model.eval(), images, 256).tolist()]


def raw_bpd(record: dict) -> float:
    """The raw weights' test bits/dim (records written before the field existed had no EMA)."""
    return record.get("test_bpd_raw", record["test_bpd"])


def summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def pairs(presets: list[str]) -> list[tuple[str, str]]:
    """(a, b) pairs whose difference b - a the table shows: an ablation against its baseline, the others all."""
    baselines = [p for p in presets if p in BASELINES]
    ablations = [p for p in presets if p in ABLATIONS and p not in BASELINES]
    others = [p for p in presets if p not in ABLATIONS]
    return ([(base, p) for base in baselines for p in ablations]
            + [(a, b) for i, a in enumerate(others) for b in others[i + 1:]])


def table(results: dict, seeds: list[int]) -> str:
    """Markdown: one row per preset (raw weights' bits/dim per seed, mean, std, range), then the paired differences."""
    done = {p: {int(s): r for s, r in runs.items() if r is not None} for p, runs in results.items()}
    lines = ["| model (preset), raw weights | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std | range |",
             "|---|" + "---:|" * (len(seeds) + 3)]
    for preset, runs in done.items():
        values = [raw_bpd(runs[s]) for s in seeds if s in runs]
        cells = [f"{raw_bpd(runs[s]):.3f}" if s in runs else "" for s in seeds]
        if values:
            st = summary(values)
            cells += [f"{st['mean']:.3f}", f"{st['std']:.3f}", f"{st['min']:.3f} to {st['max']:.3f}"]
        else:
            cells += ["", "", ""]
        lines.append(f"| {LABELS.get(preset, preset)} (`{preset}`) | " + " | ".join(cells) + " |")
    for a, b in pairs(list(done)):
        common = [s for s in seeds if s in done[a] and s in done[b]]
        if not common:
            continue
        diffs = {s: raw_bpd(done[b][s]) - raw_bpd(done[a][s]) for s in common}
        st = summary(list(diffs.values()))
        cells = [f"{diffs[s]:+.3f}" if s in diffs else "" for s in seeds]
        lines.append(f"| `{b}` − `{a}` | " + " | ".join(cells)
                     + f" | {st['mean']:+.3f} | {st['std']:.3f} | {st['min']:+.3f} to {st['max']:+.3f} |")
    ema = {p: runs for p, runs in done.items() if any(r.get("ema") for r in runs.values())}
    for preset, runs in ema.items():  # what the engine reports for a model with an EMA, beside the table
        cells = [f"{runs[s]['test_bpd']:.3f}" if s in runs else "" for s in seeds]
        st = summary([runs[s]["test_bpd"] for s in seeds if s in runs])
        lines.append(f"| {LABELS.get(preset, preset)}, EMA weights (not compared) | " + " | ".join(cells)
                     + f" | {st['mean']:.3f} | {st['std']:.3f} | {st['min']:.3f} to {st['max']:.3f} |")
    return "\n".join(lines)


def expand(names: list[str]) -> list[str]:
    presets = []
    for name in names:
        for preset in GROUPS.get(name, [name]):
            get_preset(preset)  # an unknown name stops here, with the list of presets
            if preset not in presets:
                presets.append(preset)
    return presets


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--presets", nargs="+", default=["chapters"],
                   help="preset names, or the groups 'chapters' (default) and 'ch06b'")
    p.add_argument("--retrain", action="store_true",
                   help="delete these presets' run folders for these seeds and train them again")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "seeds", help="where the run folders go")
    p.add_argument("--results", type=Path, default=None,
                   help="the JSON file (default benchmarks/seeds.json; benchmarks/seeds_ch06b.json for Chapter 6b's ablations)")
    args = p.parse_args(argv)
    try:
        presets = expand(args.presets)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.results is None:
        ablations_only = all(preset in ABLATIONS for preset in presets)
        args.results = ROOT / "benchmarks" / ("seeds_ch06b.json" if ablations_only else "seeds.json")
    stored = json.loads(args.results.read_text()) if args.results.exists() else {}
    results = {preset: dict(runs) for preset, runs in stored.get("runs", {}).items()}  # keys: seeds as strings
    if args.retrain:
        for preset in presets:
            for seed in args.seeds:
                shutil.rmtree(args.runs / f"{preset}_seed{seed}", ignore_errors=True)
                results.get(preset, {}).pop(str(seed), None)
    seeds = sorted(set(args.seeds) | set(stored.get("seeds", [])))
    for seed in args.seeds:  # seed by seed, so a partial table already compares the models
        for preset in presets:
            start = time.perf_counter()
            record = run_one(preset, seed, args.runs)
            results.setdefault(preset, {})[str(seed)] = record
            print(f"{preset} seed {seed}: {raw_bpd(record):.4f} bits/dim with the raw weights"
                  + (f", {record['test_bpd']:.4f} with the EMA" if record["ema"] else "")
                  + f" ({time.perf_counter() - start:.0f} s; load {os.getloadavg()[0]:.2f})", flush=True)
            stats = {pr: summary([raw_bpd(r) for r in runs.values()]) for pr, runs in results.items() if runs}
            args.results.write_text(json.dumps({"seeds": seeds, "protocol": "test_bpd_raw: the raw weights' test "
                                                "negative ELBO (bits/dim); test_bpd: the engine's (EMA weights "
                                                "where kept)", "runs": results, "summary": stats}, indent=2) + "\n")
    print(table({p: results[p] for p in presets if p in results}, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
