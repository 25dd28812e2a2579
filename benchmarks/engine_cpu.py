"""Step time and activation memory of the training engine on this CPU, for any preset's model.

    .venv/bin/python benchmarks/engine_cpu.py [--preset vae_fashion] [--threads N] [--steps 20] [--batch-size 128]
        [--settings fp32 "fp32 + compile" ...]

The model is the preset's, on random images of its dataset's shape and grid (so no dataset is
needed), trained by the engine's own ``Trainer.train_step``
(autocast, backward, clipping, skip check, Adamax). Step time: median over ``--steps`` steps after
3 warm-up steps, the settings taking turns step by step. The first step is reported apart: with
``compile`` it is the compilation, from an empty compile cache (``TORCHINDUCTOR_CACHE_DIR`` is a
fresh folder unless set). Activation memory: bytes the autograd graph saves for backward
in one training forward (``torch.autograd.graph.saved_tensors_hooks``), each distinct storage
counted once; with grad checkpointing, what the checkpointed blocks recompute is not saved; not
measured for compiled settings (the compiled graph saves its own tensors). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

# A fresh compile cache, so that "first step" with compile is the cold compilation a user meets once.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor_cache_"))

import torch  # noqa: E402
from bench_data import SETTINGS, random_image_trainer  # noqa: E402

from hvae_lib.data.contract import dataset_info  # noqa: E402
from hvae_lib.memory.saved_tensors import count_saved_tensors  # noqa: E402
from hvae_lib.models.presets import get_preset  # noqa: E402
from hvae_lib.training import engine  # noqa: E402

DEFAULT_SETTINGS = ("fp32", "bf16", "fp32 + grad checkpointing")


def saved_bytes(trainer: engine.Trainer, x: torch.Tensor) -> int:
    """Bytes saved for backward by one training forward and loss, each storage counted once."""
    (loss, _, _), saved = count_saved_tensors(lambda: trainer.loss(x, trainer.step))
    loss.backward()  # release the graph as a real step would
    trainer.optimizer.zero_grad(set_to_none=True)
    return saved.total_bytes


def timed_step(trainer: engine.Trainer) -> float:
    t0 = time.perf_counter()
    trainer.train_step()
    return time.perf_counter() - t0


def measure(preset: str, batch_size: int, steps: int, settings=DEFAULT_SETTINGS) -> dict[str, dict]:
    """Per setting: first-step time, median step time and saved bytes. The settings take turns step by
    step, so a burst of load from other processes on a shared machine hits all of them alike."""
    trainers = {name: random_image_trainer(preset, SETTINGS[name], batch_size, batch_size * (steps + 4), "cpu")
                for name in settings}
    memory = {name: None if t.config.run.compile else saved_bytes(t, t.batches.get(0)) for name, t in trainers.items()}
    first = {name: timed_step(t) for name, t in trainers.items()}  # compiles where asked
    for t in trainers.values():
        for _ in range(2):  # warm-up: allocator, oneDNN kernels
            t.train_step()
    times: dict[str, list[float]] = {name: [] for name in trainers}
    loads = []
    for _ in range(steps):
        loads.append(os.getloadavg()[0])
        for name, t in trainers.items():
            times[name].append(timed_step(t))
    rows = {}
    for name, t in trainers.items():
        median = statistics.median(times[name])
        rows[name] = {"step_ms": 1000 * median, "img_s": batch_size / median, "first_s": first[name],
                      "saved_mib": None if memory[name] is None else memory[name] / 2**20,
                      "params": sum(p.numel() for p in t.model.parameters()), "load": statistics.median(loads)}
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="vae_fashion")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--settings", nargs="*", default=list(DEFAULT_SETTINGS), help=f"any of {list(SETTINGS)}")
    args = p.parse_args()
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)}")
    torch.set_num_threads(args.threads)
    rows = measure(args.preset, args.batch_size, args.steps, args.settings)
    base = rows[args.settings[0]]
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    data = get_preset(args.preset).data
    shape = "x".join(map(str, dataset_info(data.name, data.resolution).image_shape))
    print(f"{args.preset} ({base['params']:,} parameters), batch {args.batch_size} of {shape}, "
          f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, load average {load} "
          f"(median {base['load']:.1f} during the timed steps)\n")
    print(f"| setting | first step (s) | step time (ms, median) | images/s | saved for backward (MiB) | vs {args.settings[0]} |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        memory = "–" if r["saved_mib"] is None else f"{r['saved_mib']:.1f}"
        ratio = f"{r['step_ms'] / base['step_ms']:.2f}x time"
        if r["saved_mib"] is not None and base["saved_mib"]:
            ratio += f", {r['saved_mib'] / base['saved_mib']:.2f}x memory"
        print(f"| {name} | {r['first_s']:.1f} | {r['step_ms']:.0f} | {r['img_s']:.0f} | {memory} | {ratio} |")


if __name__ == "__main__":
    main()
