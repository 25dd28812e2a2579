"""The Very Deep VAE's training step beside openai/vdvae's own code on a GPU: images per second and peak memory.

    python benchmarks/vdvae_side_by_side_gpu.py --official SRC_DIR --preset vdvae_cifar10 [--batch 32]
    python benchmarks/vdvae_side_by_side_gpu.py --official SRC_DIR --preset vdvae_ffhq256 [--batch 4]
    python benchmarks/vdvae_side_by_side_gpu.py --tiny [--official SRC_DIR] [--preset ...]   # seconds, on the CPU

SRC_DIR holds the official ``vae.py``, ``vae_helpers.py`` and ``hps.py`` (as for
``vdvae_side_by_side.py``, whose ``OfficialStep`` is the official side: train.py's training step
without MPI, torch's AdamW for apex's FusedAdam, the official EMA). Our side is the engine's own
``Trainer.train_step`` on the preset (random images of its dataset's shape and bit depth). Both are
built from the paper preset (the official ``cifar10`` or ``ffhq256`` hps), at the same batch. The
settings, each alone in a fresh process (``side_by_side.py``): official fp32 (openai/vdvae has no
mixed precision); ours in fp32 and bf16, each without and with gradient checkpointing. Without
``--official`` only ours run.

``--tiny`` shrinks the preset (width 16 or 8, one block per resolution) and runs batch 2 on the CPU
for 1 warm-up and 2 timed steps: what the test suite runs. Prints a markdown table whose rows
RESULTS.md takes (ratios to the official fp32 step); ``--json FILE`` appends the rows to FILE.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

OFFICIAL_HPS = {"vdvae_cifar10": "cifar10", "vdvae_ffhq256": "ffhq256"}
TINY = {  # keys the official hps and our presets share
    "vdvae_cifar10": dict(width=16, enc_blocks="32x1,32d2,16x1,16d2,8x1,8d2,4x1,4d4,1x1",
                          dec_blocks="1x1,4m1,4x1,8m4,8x1,16m8,16x1,32m16,32x1"),
    "vdvae_ffhq256": dict(width=8, enc_blocks="256x1,256d2,128x1,128d2,64x1,64d2,32x1,32d2,16x1,16d4,4x1,4d4,1x1",
                          dec_blocks="1x1,4m1,4x1,16m4,16x1,32m16,32x1,64m32,64x1,128m64,128x1,256m128,256x1"),
}
# name: (side, precision, gradient checkpointing)
SETTINGS = {
    "official fp32": ("official", "fp32", False),
    "ours fp32": ("ours", "fp32", False),
    "ours fp32 + checkpointing": ("ours", "fp32", True),
    "ours bf16": ("ours", "bf16", False),
    "ours bf16 + checkpointing": ("ours", "bf16", True),
}


def build(device: str, src: str | None, preset: str, overrides: dict, batch: int, side: str, precision: str,
          checkpointing: bool):
    """One setting's training step (returns the loss) and its parameter count."""
    import torch
    from bench_data import random_image_trainer

    sets = [f"{k}={v}" for k, v in overrides.items()]
    trainer = random_image_trainer(preset, [f"precision={precision}", f"grad_checkpointing={str(checkpointing).lower()}",
                                            *sets], batch, batch * 4, device)
    if side == "ours":
        return (lambda: trainer.train_step()["loss"]), sum(p.numel() for p in trainer.model.parameters())
    from official_vdvae import load_official_vdvae
    from vdvae_side_by_side import OfficialStep
    hps, vae = load_official_vdvae(src)
    images = trainer.batches.get(0).mul(2**trainer.info.bits - 1).round()  # (B, C, H, W) on the data's grid
    if trainer.info.bits == 5:  # the official FFHQ-256 input is 8-bit; the 5-bit levels spread over 0..255
        images = images * 8
    del trainer
    torch.manual_seed(0)
    official = OfficialStep(vae, hps, overrides, images, preset=OFFICIAL_HPS[preset], device=device)
    return official.step, sum(p.numel() for p in official.model.parameters())


def main(argv=None) -> int:
    from side_by_side import device_line, measure, table, write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official", default=None, help="folder with the official vae.py, vae_helpers.py and hps.py")
    p.add_argument("--preset", default="vdvae_cifar10", choices=sorted(OFFICIAL_HPS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {list(SETTINGS)}")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (the CPU runs)")
    p.add_argument("--tiny", action="store_true", help="the preset shrunk, batch 2 on the CPU, 2 steps: a test")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    overrides = TINY[a.preset] if a.tiny else {}
    if a.tiny:
        a.batch, a.device, a.steps, a.warmup = 2, "cpu", 2, 1
    names = a.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        sys.exit(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)}")
    if a.official is None:
        names = [n for n in names if SETTINGS[n][0] == "ours"]
        print("no --official folder: measuring our settings only")
    else:
        from official_vdvae import load_official_vdvae
        load_official_vdvae(a.official)  # exits with one sentence if a file is missing
    if a.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            sys.exit("no CUDA device here; --tiny runs this comparison on the CPU at a small size.")
    contestants = {n: ("vdvae_side_by_side_gpu", "build", dict(src=a.official, preset=a.preset, overrides=overrides,
                                                              batch=a.batch, side=SETTINGS[n][0],
                                                              precision=SETTINGS[n][1], checkpointing=SETTINGS[n][2]))
                   for n in names}
    size = "tiny " if a.tiny else ""
    print(f"{size}{a.preset}, batch {a.batch}, {a.warmup} warm-up and {a.steps} timed steps, {device_line(a.device)}")
    rows = measure(contestants, a.device, a.batch, a.warmup, a.steps, a.threads)
    print()
    print(table(rows, "official fp32" if "official fp32" in rows else None, a.device))
    if a.json:
        write_json(a.json, dict(comparison="vdvae", preset=a.preset, tiny=a.tiny, batch=a.batch,
                                device=device_line(a.device), command="python " + shlex.join(sys.argv), rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
