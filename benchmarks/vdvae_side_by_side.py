"""Training step of openai/vdvae's model against ours, side by side on this CPU: time and bytes saved for backward.

    .venv/bin/python benchmarks/vdvae_side_by_side.py SRC_DIR [--steps 20] [--batch 8] [--threads 2]

SRC_DIR holds the official ``vae.py``, ``vae_helpers.py`` and ``hps.py`` (extracted from openai/vdvae;
imported at run time, nothing of it is copied here). Both models are built at the same configuration,
by default the issue's small one: the official ``cifar10`` preset with width 128, encoder
``32x3,32d2,16x3,16d2,8x3,8d2,4x2,4d4,1x2`` and decoder ``1x1,4m1,4x2,8m4,8x3,16m8,16x3,32m16,32x3``
(1,920,708 parameters each), batch 8, fp32, ``--threads`` threads, on the same random 8-bit images.

- official step: the official ``training_step`` without its MPI parts: zero_grad, forward ELBO,
  backward, ``clip_grad_norm_(grad_clip)``, the skip test, AdamW (torch's, in place of apex's
  FusedAdam: same lr, weight decay and betas), the LR schedule, and the official EMA update;
- our step: the engine's own ``Trainer.train_step`` on the ``vdvae_cifar10`` preset with the same
  overrides (batch fetch, loss per dimension, backward, clipping, skip test, AdamW, EMA, schedule),
  once without and once with gradient checkpointing.

The three take turns step by step (official, ours, ours + checkpointing, official, ...) so a burst
of load from other processes hits all of them alike; medians over ``--steps`` steps after 3 warm-up
steps each (wall time, and the process's CPU time, user + sys, which a loaded machine inflates less
at one thread; at two, OpenMP's spinning threads count too). Saved bytes: one training forward under ``torch.autograd.graph.saved_tensors_hooks``
(``hvae_lib.memory.saved_tensors.count_saved_tensors``, each storage counted once, parameters included), measured
after the timing. Prints the load average beside the times; the last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))
from bench_data import random_image_trainer  # noqa: E402
from official_vdvae import load_official_vdvae  # noqa: E402
from vdvae_import_check import NORMALISATION, official_hparams  # noqa: E402

from hvae_lib.memory.saved_tensors import count_saved_tensors  # noqa: E402

SMALL = dict(width=128, enc_blocks="32x3,32d2,16x3,16d2,8x3,8d2,4x2,4d4,1x2",
             dec_blocks="1x1,4m1,4x2,8m4,8x3,16m8,16x3,32m16,32x3")


class OfficialStep:
    """The official training step (train.py's training_step and update_ema), by default on one fixed batch.

    ``preset`` is the official hps name (``cifar10``, ``ffhq256``, ...) and ``images`` (B, C, H, W)
    8-bit levels; :meth:`prepare` preprocesses another batch as the official data.py does (FFHQ-256's
    loss target at 5 bits in 8-bit units).
    """

    def __init__(self, vae, hps, overrides: dict, images: torch.Tensor, preset: str = "cifar10", device: str = "cpu"):
        H = official_hparams(hps, preset, overrides, images.shape[-1])
        self.H, self.device = H, device
        self.model = vae.VAE(H).to(device).train()
        self.ema = vae.VAE(H).to(device)
        self.ema.load_state_dict(self.model.state_dict())
        self.ema.requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=H.lr, weight_decay=H.wd, betas=(H.adam_beta1, H.adam_beta2))
        warmup = H.warmup_iters
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda it: 1.0 if it > warmup else it / warmup)
        self.prepare(images)

    def prepare(self, images: torch.Tensor) -> None:
        """The official input and loss target of ``images`` (B, C, H, W) in 0..255, in NHWC on the device."""
        x = images.permute(0, 2, 3, 1).float().to(self.device)  # (B, H, W, C), official NHWC
        shift, scale = NORMALISATION[self.H.dataset]
        target = torch.floor(x / 8) * 8 if self.H.dataset == "ffhq_256" else x
        self.x_in, self.target = (x + shift) * scale, (target - 127.5) / 127.5

    def step(self) -> float:
        """One official update; returns the loss (the negative ELBO in nats per dimension)."""
        H = self.H
        self.model.zero_grad()
        stats = self.model.forward(self.x_in, self.target)
        stats["elbo"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), H.grad_clip).item()
        nans = torch.isnan(stats["distortion"]).sum() + torch.isnan(stats["rate"]).sum()
        if nans == 0 and (H.skip_threshold == -1 or grad_norm < H.skip_threshold):
            self.opt.step()
            with torch.no_grad():
                for p1, p2 in zip(self.model.parameters(), self.ema.parameters()):
                    p2.data.mul_(H.ema_rate)
                    p2.data.add_(p1.data * (1 - H.ema_rate))
        self.sched.step()
        return float(stats["elbo"].detach())

    def saved_bytes(self) -> int:
        self.model.zero_grad()
        out, saved = count_saved_tensors(lambda: self.model.forward(self.x_in, self.target)["elbo"],
                                         list(self.model.parameters()))
        out.backward()
        return saved.total_bytes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", help="folder with the official vae.py, vae_helpers.py and hps.py")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    hps, vae = load_official_vdvae(a.src)

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    sets = [f"{k}={v}" for k, v in SMALL.items()]
    runners = {}
    ours = {name: random_image_trainer("vdvae_cifar10", ["precision=fp32", f"grad_checkpointing={ckpt}", *sets],
                                       a.batch, a.batch * (a.steps + 4), "cpu")
            for name, ckpt in (("ours", "false"), ("ours + checkpointing", "true"))}
    images = ours["ours"].batches.get(0).mul(255).round()  # (B, C, H, W), 8-bit levels
    official = OfficialStep(vae, hps, SMALL, images)
    runners["official"] = official.step
    for name, trainer in ours.items():
        runners[name] = trainer.train_step
    params = {"official": sum(p.numel() for p in official.model.parameters())}
    params.update({name: sum(p.numel() for p in t.model.parameters()) for name, t in ours.items()})
    assert len(set(params.values())) == 1, params
    print(f"{params['official']:,} parameters on each side; batch {a.batch}, fp32, {torch.get_num_threads()} threads")

    load_before = os.getloadavg()
    for run in runners.values():
        for _ in range(3):
            run()
    times = {name: [] for name in runners}
    cpu = {name: [] for name in runners}
    for _ in range(a.steps):
        for name, run in runners.items():
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    load_after = os.getloadavg()

    saved = {"official": official.saved_bytes()}
    for name, trainer in ours.items():
        x = trainer.batches.get(0)
        (loss, _, _), s = count_saved_tensors(lambda: trainer.loss(x, trainer.step), list(trainer.model.parameters()))
        loss.backward()
        trainer.optimizer.zero_grad(set_to_none=True)
        saved[name] = s.total_bytes
    rows = {name: {"step_s_median": statistics.median(t), "step_s_min": min(t),
                   "cpu_s_median": statistics.median(cpu[name]), "saved_mib": saved[name] / 2**20}
            for name, t in times.items()}
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    print(f"{'':22s} {'median step s':>14s} {'min step s':>11s} {'median CPU s':>13s} {'saved for backward MiB':>23s}")
    for name, r in rows.items():
        print(f"{name:22s} {r['step_s_median']:14.3f} {r['step_s_min']:11.3f} {r['cpu_s_median']:13.3f} "
              f"{r['saved_mib']:23.1f}")
    print(json.dumps({"parameters": params["official"], "batch": a.batch, "threads": torch.get_num_threads(),
                      "loadavg_before": load_before, "loadavg_after": load_after, "rows": rows,
                      "step_s_all": {k: [round(x, 4) for x in v] for k, v in times.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
