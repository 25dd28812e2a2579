"""A short learning curve of ``vdvae_cifar10`` beside openai/vdvae's own code: the same initialisation
and batches, losses agreeing within the noise of two seeds.

    python benchmarks/vdvae_learning_curve.py --official SRC_DIR [--steps 300] [--batch 32] [--seeds 0 1]
    python benchmarks/vdvae_learning_curve.py --tiny [--official SRC_DIR]     # seconds, on the CPU

For each seed, the official model is built from its ``cifar10`` hps under ``torch.manual_seed(seed)``
(``vdvae_side_by_side.OfficialStep``: train.py's step, AdamW, warm-up, clipping, skipping, EMA) and
its weights are copied into our engine's ``Trainer`` on the ``vdvae_cifar10`` preset
(``hvae_lib.models.vdvae_official.official_to_ours``), so both start from the same weights. Each step
both train on the same batch: the engine's batch for that step (``Trainer.batches``), handed to the
official step with the official preprocessing. The data are procedural 32x32 shapes (``shapes``, made
here from the seed, so no download is needed on a machine without network), 8-bit like CIFAR-10. The
two sides draw their latent noise in their own order, so their curves part like two seeds do: the
check is that the gap between the sides' losses (averaged over the seeds) stays within the spread
between the two seeds of one side, window by window. The loss is the negative ELBO in nats per
dimension (the official ``elbo``; ours ``bpd`` times ln 2).

``--tiny`` shrinks the model (``vdvae_side_by_side_gpu.TINY``) to batch 4 and 10 steps on the CPU:
what the test suite runs. Without ``--official`` only our two seeds run. Prints the table rows
RESULTS.md takes; ``--json FILE`` writes the curves, ``--plot FILE`` draws them.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from bench_data import random_image_trainer  # noqa: E402
from side_by_side import device_line  # noqa: E402
from vdvae_side_by_side_gpu import TINY  # noqa: E402

from hvae_lib.data import load_dataset  # noqa: E402
from hvae_lib.data.contract import Datasets, ImageDataset, dataset_info  # noqa: E402
from hvae_lib.models.vdvae_official import official_to_ours  # noqa: E402
from hvae_lib.training import engine  # noqa: E402


def shapes_as_cifar(n: int, seed: int) -> Datasets:
    """n procedural 32x32 colour shapes, served with CIFAR-10's data info (8-bit, 3x32x32)."""
    shapes = load_dataset("shapes", resolution=32, train_limit=n, test_limit=8, seed=seed).train
    images = torch.stack([shapes[i][0] for i in range(n)]).mul(255).round().to(torch.uint8)  # (N, 3, 32, 32)
    split = ImageDataset(images, torch.zeros(n, dtype=torch.long))
    return Datasets(split, split, dataset_info("cifar10"))


def curves_for_seed(seed: int, a, overrides: dict, official_modules) -> dict[str, list[float]]:
    sets = [f"{k}={v}" for k, v in overrides.items()] + [f"seed={seed}", "precision=fp32", "grad_checkpointing=false"]
    data = shapes_as_cifar(a.batch * a.steps, seed)
    engine.load_data = lambda c: data  # the engine's data hook
    trainer = random_image_trainer("vdvae_cifar10", sets, a.batch, a.batch * a.steps, a.device)
    curves = {"ours": []}
    official = None
    if official_modules is not None:
        from vdvae_side_by_side import OfficialStep
        hps, vae = official_modules
        torch.manual_seed(seed)
        official = OfficialStep(vae, hps, overrides, trainer.batches.get(0).mul(255).round(), device=a.device)
        weights = official_to_ours(official.model.state_dict(), trainer.model)
        trainer.model.load_state_dict(weights)
        if trainer.ema is not None:
            trainer.ema.load_state_dict(weights)
        curves["official"] = []
    for step in range(a.steps):
        if official is not None:
            official.prepare(trainer.batches.get(step).mul(255).round())  # the batch ours takes next
            curves["official"].append(official.step())
        curves["ours"].append(trainer.train_step()["bpd"] * math.log(2))
        if (step + 1) % a.window == 0:
            print(f"  seed {seed}, step {step + 1}: " + ", ".join(f"{k} {sum(v[-a.window:]) / a.window:.4f}"
                                                                 for k, v in curves.items()), flush=True)
    return curves


def windows(curve: list[float], size: int) -> list[float]:
    return [sum(curve[i:i + size]) / size for i in range(0, len(curve) - size + 1, size)]


def compare(runs: dict[int, dict], window: int) -> tuple[str, bool | None]:
    """The markdown rows (one per window) and whether the sides agree within the seeds' spread in every window."""
    seeds = sorted(runs)
    sides = [s for s in ("official", "ours") if s in runs[seeds[0]]]
    w = {(s, seed): windows(runs[seed][s], window) for s in sides for seed in seeds}
    head = " | ".join(f"{s} seed {seed}" for s in sides for seed in seeds)
    lines = [f"| steps | {head} | gap between the sides | spread between the seeds | within the noise |",
             "|---|" + "---:|" * (len(sides) * len(seeds) + 3)]
    verdicts = []
    for i in range(len(w[(sides[0], seeds[0])])):
        values = " | ".join(f"{w[(s, seed)][i]:.4f}" for s in sides for seed in seeds)
        spread = max(abs(w[(s, seeds[0])][i] - w[(s, seeds[-1])][i]) for s in sides)
        if len(sides) == 2:
            gap = abs(sum(w[("ours", seed)][i] - w[("official", seed)][i] for seed in seeds) / len(seeds))
            verdicts.append(gap <= spread)
            tail = f"{gap:.4f} | {spread:.4f} | {'yes' if verdicts[-1] else 'no'}"
        else:
            tail = f" | {spread:.4f} | "
        lines.append(f"| {i * window + 1}-{(i + 1) * window} | {values} | {tail} |")
    return "\n".join(lines), (all(verdicts) if verdicts else None)


def plot(runs: dict[int, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for seed, curves in sorted(runs.items()):
        for side, curve in curves.items():
            ax.plot(range(1, len(curve) + 1), curve, lw=1, ls="-" if side == "ours" else "--", label=f"{side}, seed {seed}")
    ax.set(xlabel="step", ylabel="negative ELBO (nats per dimension)", title="vdvae_cifar10: ours beside openai/vdvae")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official", default=None, help="folder with the official vae.py, vae_helpers.py and hps.py")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs=2, default=[0, 1])
    p.add_argument("--window", type=int, default=50, help="steps averaged per row")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="a tiny model, batch 4, 10 steps on the CPU: a test")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    a = p.parse_args(argv)
    overrides = TINY["vdvae_cifar10"] if a.tiny else {}
    if a.tiny:
        a.batch, a.steps, a.window, a.device = 4, 10, 5, "cpu"
        torch.set_num_threads(1)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here; --tiny runs this comparison on the CPU at a small size.")
    official_modules = None
    if a.official is not None:
        from official_vdvae import load_official_vdvae
        official_modules = load_official_vdvae(a.official)
    else:
        print("no --official folder: our two seeds only")
    print(f"{'tiny ' if a.tiny else ''}vdvae_cifar10, batch {a.batch}, {a.steps} steps, seeds {a.seeds}, {device_line(a.device)}")
    runs = {seed: curves_for_seed(seed, a, overrides, official_modules) for seed in a.seeds}
    rows, agree = compare(runs, a.window)
    print()
    print(rows)
    if agree is not None:
        print(f"\nthe two sides agree within the noise of two seeds in every window: {'yes' if agree else 'no'}")
    if a.json:
        a.json.write_text(json.dumps(dict(command="python " + shlex.join(sys.argv), device=device_line(a.device),
                                          batch=a.batch, steps=a.steps, tiny=a.tiny, agree=agree,
                                          curves={str(k): v for k, v in runs.items()}), indent=1) + "\n")
    if a.plot:
        plot(runs, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
