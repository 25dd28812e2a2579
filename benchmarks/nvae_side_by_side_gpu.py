"""NVAE's training step beside the official NVlabs/NVAE code on a GPU: images per second and peak memory.

    python benchmarks/nvae_side_by_side_gpu.py --official OFFICIAL_DIR [--config nvae_cifar10] [--batch 32]
    python benchmarks/nvae_side_by_side_gpu.py --tiny [--official OFFICIAL_DIR]     # seconds, on the CPU

OFFICIAL_DIR holds the official files as for ``official_nvae.py`` (which builds both models: the
same configuration, the same batch of random 8-bit images, the same loss at KL weight 1 with KL
balancing and the spectral and BN regularisers, Adamax at lr 1e-4). Without ``--official`` only our
settings run. The settings, each alone in a fresh process (``side_by_side.py``):

- official fp32, and official AMP: ``autocast`` to fp16 with a ``GradScaler`` starting at 2^10, as
  the official train.py always trains;
- ours in fp32, fp16 (the same AMP), bf16, and fp32 and bf16 with gradient checkpointing.

``--tiny`` is a 16x narrower CIFAR-10 layout with 2 groups (``nvae_cifar10_tiny``) at batch 4 on the
CPU, 1 warm-up and 2 timed steps: what the test suite runs. Prints a markdown table whose rows
RESULTS.md takes, with each setting's images/s and memory as ratios to the official fp32 step;
``--json FILE`` appends the rows, the device and the command line to FILE.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

# name: (side, precision, gradient checkpointing)
SETTINGS = {
    "official fp32": ("official", "fp32", False),
    "official AMP (fp16)": ("official", "fp16", False),
    "ours fp32": ("ours", "fp32", False),
    "ours fp16 (AMP)": ("ours", "fp16", False),
    "ours bf16": ("ours", "bf16", False),
    "ours fp32 + checkpointing": ("ours", "fp32", True),
    "ours bf16 + checkpointing": ("ours", "bf16", True),
}


def build(device: str, src: str | None, config: str, batch: int, side: str, precision: str, checkpointing: bool,
          lr: float):
    """One setting's training step: zero_grad, forward and loss under autocast, scaled backward, Adamax."""
    import torch
    from official_nvae import build_official, build_ours

    if side == "official":
        model, optimizer, loss, _ = build_official(src, config, batch, device)
    else:
        model, optimizer, loss, _ = build_ours(config, batch, None, device)
        model.grad_checkpointing = checkpointing
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    kind = torch.device(device).type
    scaler = torch.amp.GradScaler(kind, init_scale=2.0**10, enabled=dtype is torch.float16)
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    count = [0]

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None):
            value = loss(count[0])
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()
        count[0] += 1
        return float(value.detach())

    return step, sum(p.numel() for p in model.parameters())


def main(argv=None) -> int:
    from official_nvae import CONFIGS, OFFICIAL_FILES
    from side_by_side import device_line, measure, table, write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official", default=None, help="folder with the official NVAE files (see official_nvae.py)")
    p.add_argument("--config", default="nvae_cifar10", choices=sorted(CONFIGS))
    p.add_argument("--batch", type=int, default=None, help="default: the config's (32 for nvae_cifar10)")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {list(SETTINGS)}")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (the CPU runs)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--tiny", action="store_true", help="nvae_cifar10_tiny at batch 4 on the CPU, 2 steps: a test")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    if a.tiny:
        a.config, a.batch, a.device, a.steps, a.warmup, a.threads = "nvae_cifar10_tiny", a.batch or 4, "cpu", 2, 1, 1
    names = a.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        sys.exit(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)}")
    if a.official is None:
        names = [n for n in names if SETTINGS[n][0] == "ours"]
        print("no --official folder: measuring our settings only")
    else:
        a.official = os.path.abspath(a.official)
        missing = [f for f in OFFICIAL_FILES if not os.path.isfile(os.path.join(a.official, f))]
        if missing:
            sys.exit(f"{a.official} does not hold the official NVAE files ({', '.join(missing)} missing); see official_nvae.py.")
    if a.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            sys.exit("no CUDA device here; --tiny runs this comparison on the CPU at a small size.")
    batch = a.batch or CONFIGS[a.config]["batch"]
    contestants = {n: ("nvae_side_by_side_gpu", "build", dict(src=a.official, config=a.config, batch=batch,
                                                             side=SETTINGS[n][0], precision=SETTINGS[n][1],
                                                             checkpointing=SETTINGS[n][2], lr=a.lr))
                   for n in names}
    print(f"{a.config}, batch {batch}, {a.warmup} warm-up and {a.steps} timed steps, {device_line(a.device)}")
    rows = measure(contestants, a.device, batch, a.warmup, a.steps, a.threads)
    print()
    print(table(rows, "official fp32" if "official fp32" in rows else None, a.device))
    if a.json:
        write_json(a.json, dict(comparison="nvae", config=a.config, batch=batch, device=device_line(a.device),
                                command="python " + shlex.join(sys.argv), rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
