"""Training throughput and peak GPU memory of the engine, per precision setting, for any preset.

    python benchmarks/engine_gpu.py --preset nvae_cifar10 --batch-size 32 [--steps 10] [--settings ...]

Each setting builds a fresh ``Trainer`` on the GPU (random 8-bit or binary images of the preset's
shape, so no dataset is needed), runs 3 warm-up steps of the engine's own ``Trainer.train_step``
(autocast, backward, unscale, clip, skip check, Adamax, schedule), then times ``--steps`` steps.
``train_step`` reads the loss with ``.item()``, so every step ends synchronised and wall-clock time is
the GPU's time. Peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps (weights,
Adamax state, gradients and activations; the caching allocator's slack is not counted).
Prints a markdown table. Needs a CUDA device.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

from bench_data import PRECISION_SETTINGS, SETTINGS, random_image_trainer


def measure(preset: str, setting: list[str], batch_size: int, steps: int) -> dict:
    trainer = random_image_trainer(preset, setting, batch_size, batch_size * 4, "cuda")
    for _ in range(3):  # warm-up: cuDNN algorithm choice, allocator, lazy buffers
        trainer.train_step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times, skipped = [], 0
    for _ in range(steps):
        t0 = time.perf_counter()
        skipped += trainer.train_step()["skipped"]  # .item() inside: the step has finished on the GPU
        times.append(time.perf_counter() - t0)
    row = {"step_ms": 1000 * statistics.median(times), "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
           "params": sum(p.numel() for p in trainer.model.parameters()), "skipped": skipped}
    row["img_s"] = batch_size / (row["step_ms"] / 1000)
    del trainer
    gc.collect()
    torch.cuda.empty_cache()
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="nvae_cifar10")
    p.add_argument("--batch-size", type=int, nargs="+", default=[32], help="one table per batch size")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--settings", nargs="*", default=list(PRECISION_SETTINGS), help=f"any of {list(SETTINGS)}")
    p.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms first")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("engine_gpu.py needs a CUDA device; benchmarks/engine_cpu.py measures the CPU.")
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)}")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    for batch_size in args.batch_size:
        rows = {}
        for name in args.settings:
            try:
                rows[name] = measure(args.preset, SETTINGS[name], batch_size, args.steps)
            except torch.OutOfMemoryError:
                rows[name] = None  # reported as a row: what does not fit is a result too
            gc.collect()  # out here the traceback, and the trainer it holds, are gone
            torch.cuda.empty_cache()
        first = next((r for r in rows.values() if r), {"params": 0})
        print(f"\n{args.preset} ({first['params']:,} parameters), batch {batch_size}, {args.steps} timed steps, "
              f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cudnn.benchmark={args.cudnn_benchmark}, "
              f"TF32 convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'}\n")
        print("| setting | step time (ms, median) | images/s | peak memory (GiB) | skipped steps |")
        print("|---|---:|---:|---:|---:|")
        for name, r in rows.items():
            if r is None:
                print(f"| {name} | out of memory | | > {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} | |")
                continue
            print(f"| {name} | {r['step_ms']:.0f} | {r['img_s']:.0f} | {r['peak_gib']:.2f} | {r['skipped']} |",
                  flush=True)


if __name__ == "__main__":
    main()
