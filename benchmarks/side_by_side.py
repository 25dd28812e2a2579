"""Training steps of two codebases measured one after another, each in a fresh process: images per
second and peak memory. Shared by ``nvae_side_by_side_gpu.py`` and ``vdvae_side_by_side_gpu.py``.

A contestant is a builder, ``build(device, **kwargs) -> (step, parameters)``, where ``step()`` runs one
whole training step and returns the loss as a float. Each runs alone in its own spawned process, so
the GPU holds one model at a time and ``torch.cuda.max_memory_allocated`` is that contestant's peak
(weights, optimiser state, gradients and activations; the caching allocator's slack not counted),
taken over the timed steps after ``warmup`` untimed ones. On the CPU (the tiny test runs) the peak
is the process's maximum resident set size instead, which also counts Python and torch themselves.
A step ends with ``torch.cuda.synchronize()``, so its wall time is the GPU's. Out of memory is a row
too.
"""
from __future__ import annotations

import importlib
import json
import multiprocessing
import statistics
import time
from pathlib import Path


def _child(conn, module: str, builder: str, kwargs: dict, device: str, warmup: int, steps: int, threads: int) -> None:
    import resource

    import torch
    torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    try:
        step, params = getattr(importlib.import_module(module), builder)(device=device, **kwargs)
        for _ in range(warmup):
            step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times, losses = [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            losses.append(step())
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        conn.send(dict(params=params, step_s=statistics.median(times), steps_s=[round(t, 4) for t in times],
                       peak_gib=peak / 2**30, losses=losses, out_of_memory=False))
    except torch.OutOfMemoryError:
        conn.send(dict(out_of_memory=True))


def measure(contestants: dict[str, tuple[str, str, dict]], device: str, batch: int, warmup: int = 3, steps: int = 10,
            threads: int = 2) -> dict[str, dict]:
    """{name: row} for ``contestants`` {name: (module, builder, kwargs)}, measured one at a time."""
    ctx = multiprocessing.get_context("spawn")
    rows = {}
    for name, (module, builder, kwargs) in contestants.items():
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_child, args=(child, module, builder, kwargs, device, warmup, steps, threads))
        process.start()
        try:
            row = parent.recv()
        except EOFError:  # the process died (e.g. killed for host memory) without a word
            row = dict(out_of_memory=True)
        process.join()
        if not row["out_of_memory"]:
            row["images_per_s"] = batch / row["step_s"]
        rows[name] = row
        shown = "out of memory" if row["out_of_memory"] else f"{row['images_per_s']:.1f} images/s, peak {row['peak_gib']:.2f} GiB"
        print(f"  {name}: {shown}", flush=True)
    return rows


def table(rows: dict[str, dict], reference: str | None, device: str) -> str:
    """Markdown rows: images/s and peak memory, with ratios to ``reference`` (the official fp32 row)."""
    peak = "peak GPU memory (GiB, max_memory_allocated)" if device.startswith("cuda") else "peak RSS (GiB)"
    lines = [f"| setting | parameters | step (ms, median) | images/s | {peak} | images/s vs {reference or '-'} | "
             f"memory vs {reference or '-'} |", "|---|---:|---:|---:|---:|---:|---:|"]
    ref = rows.get(reference) if reference else None
    for name, r in rows.items():
        if r["out_of_memory"]:
            lines.append(f"| {name} | | out of memory | | | | |")
            continue
        speed = f"{r['images_per_s'] / ref['images_per_s']:.2f}x" if ref and not ref["out_of_memory"] else ""
        memory = f"{r['peak_gib'] / ref['peak_gib']:.2f}x" if ref and not ref["out_of_memory"] else ""
        lines.append(f"| {name} | {r['params']:,} | {1000 * r['step_s']:.1f} | {r['images_per_s']:.1f} | "
                     f"{r['peak_gib']:.2f} | {speed} | {memory} |")
    return "\n".join(lines)


def device_line(device: str) -> str:
    import os

    import torch
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}), torch {torch.__version__}"


def write_json(path: Path, entry: dict) -> None:
    """Append ``entry`` to the JSON list at ``path`` (created if missing)."""
    entries = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*entries, entry], indent=1) + "\n")
