"""Step time and activation memory of the training engine on this CPU, for any preset's model.

    .venv/bin/python benchmarks/engine_cpu.py [--preset vae_fashion] [--threads N] [--steps 20] [--batch-size 128]

The model is the preset's, on random images of its dataset's shape and grid (so no dataset is
needed), trained by the engine's own ``Trainer.train_step``
(autocast, backward, clipping, skip check, Adamax). Step time: median over ``--steps`` steps after
3 warm-up steps. Activation memory: bytes the autograd graph saves for backward in one training
forward (``torch.autograd.graph.saved_tensors_hooks``), each distinct storage counted once; with
grad checkpointing, what the checkpointed blocks recompute is not saved. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from hvae_lib import engine
from hvae_lib.config import get_preset
from hvae_lib.data import dataset_info
from hvae_lib.memory import count_saved_tensors

from bench_data import SETTINGS as ALL_SETTINGS, random_image_trainer

SETTINGS = {name: ALL_SETTINGS[name] for name in ("fp32", "bf16", "fp32 + grad checkpointing")}


def saved_bytes(trainer: engine.Trainer, x: torch.Tensor) -> int:
    """Bytes saved for backward by one training forward and loss, each storage counted once."""
    (loss, _, _), saved = count_saved_tensors(lambda: trainer.loss(x, trainer.step))
    loss.backward()  # release the graph as a real step would
    trainer.optimizer.zero_grad(set_to_none=True)
    return saved.total_bytes


def measure(preset: str, batch_size: int, steps: int) -> dict[str, dict]:
    """Per setting: median step time and saved bytes. The settings take turns step by step, so a
    burst of load from other processes on a shared machine hits all of them alike."""
    trainers = {name: random_image_trainer(preset, setting, batch_size, batch_size * (steps + 4), "cpu")
                for name, setting in SETTINGS.items()}
    memory = {name: saved_bytes(t, t.batches.get(0)) for name, t in trainers.items()}
    for t in trainers.values():
        for _ in range(3):  # warm-up: allocator, oneDNN kernels
            t.train_step()
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(steps):
        for name, t in trainers.items():
            t0 = time.perf_counter()
            t.train_step()
            times[name].append(time.perf_counter() - t0)
    rows = {}
    for name, t in trainers.items():
        median = statistics.median(times[name])
        rows[name] = {"step_ms": 1000 * median, "img_s": batch_size / median, "saved_mib": memory[name] / 2**20,
                      "params": sum(p.numel() for p in t.model.parameters())}
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="vae_fashion")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(args.preset, args.batch_size, args.steps)
    base = rows["fp32"]
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    data = get_preset(args.preset).data
    shape = "x".join(map(str, dataset_info(data.name, data.resolution).image_shape))
    print(f"{args.preset} ({base['params']:,} parameters), batch {args.batch_size} of {shape}, "
          f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, load average {load}\n")
    print("| setting | step time (ms, median) | images/s | saved for backward (MiB) | vs fp32 |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['step_ms']:.0f} | {r['img_s']:.0f} | {r['saved_mib']:.1f} | "
              f"{r['step_ms'] / base['step_ms']:.2f}x time, {r['saved_mib'] / base['saved_mib']:.2f}x memory |")


if __name__ == "__main__":
    main()
