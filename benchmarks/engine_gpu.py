"""Training throughput and peak GPU memory of the engine, per precision setting, for any preset.

    python benchmarks/engine_gpu.py --preset nvae_cifar10 --batch-size 32 [--steps 10] [--settings ...]

Each setting builds a fresh ``Trainer`` on the GPU (random 8-bit or binary images of the preset's
shape, so no dataset is needed), runs 3 warm-up steps of the engine's own ``Trainer.train_step``
(autocast, backward, unscale, clip, skip check, Adamax, schedule), then times ``--steps`` steps.
``train_step`` reads the loss with ``.item()``, so every step ends synchronised and wall-clock time is
the GPU's time. Peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps (weights,
Adamax state, gradients and activations; the caching allocator's slack is not counted).
Prints a markdown table; ``--json benchmarks/gpu_results.json`` also records every row there, with
the device, torch version, date and command line (replacing an entry of the same preset, batch,
setting, device and date), for Chapter 5 and ``hvae_lib.memory.plan`` to read. Needs a CUDA device.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

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


ABOUT = ("Training throughput and peak GPU memory of the engine (benchmarks/engine_gpu.py): median step time over "
         "the timed steps, images/s = batch / step time, peak = torch.cuda.max_memory_allocated over the timed steps "
         "(weights, Adamax state, gradients, activations). One entry per (preset, batch, setting, device, date); "
         "engine_gpu.py --json FILE adds its rows here. Chapter 5 and hvae_lib.memory.plan read this file.")
UNITS = {"step_ms": "milliseconds", "images_per_s": "images per second", "peak_gib": "GiB (2^30 bytes)",
         "device_total_gib": "GiB, as torch reports the device (rounded to a whole GiB for entries transcribed "
                             "from RESULTS.md)"}
KEY = ("preset", "batch", "setting", "device", "date")


def json_run(preset: str, params: int, batch_size: int, name: str, row: dict | None, steps: int, device: dict) -> dict:
    """One entry of the results file (``row`` None: out of memory): what was measured, on what, how."""
    precision, checkpointing = (s.split("=")[1] for s in SETTINGS[name])
    return {"preset": preset, "parameters": params, "batch": batch_size, "setting": name,
           "precision": precision, "grad_checkpointing": checkpointing == "true",
           "step_ms": round(row["step_ms"], 1) if row else None, "images_per_s": round(row["img_s"], 1) if row else None,
           "peak_gib": round(row["peak_gib"], 3) if row else None, "out_of_memory": row is None,
           "skipped_steps": row["skipped"] if row else None, "timed_steps": steps, **device,
           "command": "python3 " + shlex.join(sys.argv), "source": "measured by benchmarks/engine_gpu.py --json"}


def write_json(path: Path, new_runs: list[dict]) -> None:
    """Merge ``new_runs`` into the results file at ``path`` (created if missing): an entry with the
    same preset, batch, setting, device and date is replaced. One run per line, so diffs stay readable."""
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    keys = {tuple(r.get(k) for k in KEY) for r in new_runs}
    runs = [r for r in runs if tuple(r.get(k) for k in KEY) not in keys] + new_runs
    head = json.dumps({"about": ABOUT, "units": UNITS}, indent=1)[:-2]  # without the closing brace
    body = ",\n".join("  " + json.dumps(r) for r in runs)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{head},\n \"runs\": [\n{body}\n ]\n}}\n")
    json.loads(tmp.read_text())  # never replace the file with something unreadable
    tmp.replace(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="nvae_cifar10")
    p.add_argument("--batch-size", type=int, nargs="+", default=[32], help="one table per batch size")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--settings", nargs="*", default=list(PRECISION_SETTINGS), help=f"any of {list(SETTINGS)}")
    p.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms first")
    p.add_argument("--json", type=Path, help="also record the rows in this results file (benchmarks/gpu_results.json)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("engine_gpu.py needs a CUDA device; benchmarks/engine_cpu.py measures the CPU.")
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)}")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    device = {"device": torch.cuda.get_device_name(),
              "device_total_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 2),
              "torch": torch.__version__, "date": datetime.date.today().isoformat(),
              "cudnn_benchmark": args.cudnn_benchmark}
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
        if args.json:
            write_json(args.json, [json_run(args.preset, first["params"], batch_size, name, r, args.steps, device)
                                   for name, r in rows.items()])
            print(f"\nrecorded in {args.json}")


if __name__ == "__main__":
    main()
