"""NVAE's CPU training step side by side with the official NVlabs/NVAE code: time and memory.

    .venv/bin/python benchmarks/official_nvae.py OFFICIAL_DIR [--repeats 2] [--steps 20] [--baseline DIR]

OFFICIAL_DIR holds the official files (not part of this project): model.py, neural_operations.py,
neural_ar_operations.py, distributions.py, utils.py, train.py and thirdparty/, for instance
extracted from a clone with ``git show HEAD:<path> > OFFICIAL_DIR/<path>``. ``--baseline DIR``
adds a third contestant: ``DIR/hvae_lib`` (an older revision of this library, e.g. from
``git worktree add DIR <rev>``), to measure a change against the code it replaces in the same run.

Each contestant runs in its own spawned worker process; the parent interleaves their steps
(official, ours, baseline, official, ...) so that load from other processes hits all of them
alike, and reports medians of the wall time and of the worker's CPU time (user + sys, all its
threads) per step; on a loaded machine the CPU time is the steadier of the two. Both sides build the same configuration (equal parameter counts):

- ``nvae_fashion`` (batch 64): the preset of Chapters 3-4, and the official model with the same
  flags (``--dataset mnist`` sizes; its output is given our grey-scale logistic mixture, since the
  official mixture is RGB only and its MNIST likelihood is Bernoulli);
- ``nvae_mnist`` (batch 8): the paper's MNIST model, the official README command line.
- ``nvae_cifar10`` (batch 32) and ``nvae_cifar10_tiny`` (batch 4, 16x narrower with 2 groups): the
  paper's CIFAR-10 model, for ``nvae_side_by_side_gpu.py``, which builds both sides with this file.

One step is zero_grad, forward, loss (reconstruction + KL at coefficient 1 with KL balancing, plus
lambda times the spectral and BN regularisers), backward and an Adamax step at lr 1e-4 (the
official step: train.py's loop without AMP, DDP and logging; ours: the engine's loss with beta 1).
Memory is the bytes autograd saves for backward in one forward + loss: the distinct storages
handed to its pack hook, parameters excluded (the same counter for every contestant).

CPU patches applied to the official code at import time (its files are not edited): tensorboardX
is stubbed; ``Tensor.cuda`` is a no-op; ``SYNC_BN = False`` (plain BatchNorm2d, identical at one
process); ``SyncBatchNormSwish.forward`` runs its own single-process branch (batch_norm, then the
thirdparty Swish), since the original asks torch.distributed for a world size.

Adapted from the workplace's shared yardstick (``shared/bench/official_nvae.py``).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import sys
import time
import types

CONFIGS = {
    "nvae_fashion": dict(batch=64, official=(
        "--dataset mnist --num_latent_scales 2 --num_groups_per_scale 2 --num_latent_per_group 8 --num_channels_enc 4 "
        "--num_channels_dec 4 --num_cell_per_cond_enc 1 --num_cell_per_cond_dec 1 --num_preprocess_blocks 2 "
        "--num_preprocess_cells 1 --num_postprocess_blocks 2 --num_postprocess_cells 1 --num_mixture_dec 5 "
        "--num_nf 0 --use_se --res_dist --weight_decay_norm 1e-2 --batch_size 64")),
    "nvae_mnist": dict(batch=8, official=(
        "--dataset mnist --batch_size 200 --epochs 400 --num_latent_scales 2 --num_groups_per_scale 10 "
        "--num_postprocess_cells 3 --num_preprocess_cells 3 --num_cell_per_cond_enc 2 --num_cell_per_cond_dec 2 "
        "--num_latent_per_group 20 --num_preprocess_blocks 2 --num_postprocess_blocks 2 --weight_decay_norm 1e-2 "
        "--num_channels_enc 32 --num_channels_dec 32 --num_nf 0 --ada_groups --num_process_per_node 2 --use_se --res_dist")),
    # The paper's CIFAR-10 model (NVlabs' README command; 130.9M parameters), at its per-GPU batch of 32.
    "nvae_cifar10": dict(batch=32, official=(
        "--dataset cifar10 --num_channels_enc 128 --num_channels_dec 128 --epochs 400 --num_postprocess_cells 2 "
        "--num_preprocess_cells 2 --num_latent_scales 1 --num_latent_per_group 20 --num_cell_per_cond_enc 2 "
        "--num_cell_per_cond_dec 2 --num_preprocess_blocks 1 --num_postprocess_blocks 1 --num_groups_per_scale 30 "
        "--batch_size 32 --weight_decay_norm 1e-2 --num_nf 1 --num_process_per_node 8 --use_se --res_dist")),
    # The same layout 16x narrower with 2 groups, for a seconds-long CPU run of the GPU comparison.
    "nvae_cifar10_tiny": dict(batch=4, preset="nvae_cifar10", ours=[
        "num_channels_enc=8", "num_channels_dec=8", "num_postprocess_cells=1", "num_preprocess_cells=1",
        "num_latent_per_group=4", "num_cell_per_cond_enc=1", "num_cell_per_cond_dec=1", "num_groups_per_scale=2"],
        official=(
        "--dataset cifar10 --num_channels_enc 8 --num_channels_dec 8 --num_postprocess_cells 1 --num_preprocess_cells 1 "
        "--num_latent_scales 1 --num_latent_per_group 4 --num_cell_per_cond_enc 1 --num_cell_per_cond_dec 1 "
        "--num_preprocess_blocks 1 --num_postprocess_blocks 1 --num_groups_per_scale 2 --batch_size 4 "
        "--weight_decay_norm 1e-2 --num_nf 1 --use_se --res_dist")),
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this repository: its hvae_lib is "ours"
OFFICIAL_FILES = ("model.py", "neural_operations.py", "neural_ar_operations.py", "distributions.py", "utils.py",
                  "train.py", "thirdparty/inplaced_sync_batchnorm.py", "thirdparty/swish.py")


# ----------------------------------------------------------------------------- the two sides (in workers)
def images(config: str, shape, batch: int):
    """The benchmark batch at ``shape`` (C, H, W): random 8-bit colour images (CIFAR-10 configs),
    8-bit grey ones (Fashion-MNIST) or binary ones (MNIST), 28x28, zero-padded centrally to H x W
    when that is larger (as the official MNIST pipeline pads)."""
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(1234)
    if config.startswith("nvae_cifar10"):
        return torch.randint(0, 256, (batch, 3, 32, 32), generator=g).float() / 255
    if config == "nvae_fashion":
        x = torch.randint(0, 256, (batch, 1, 28, 28), generator=g).float() / 255
    else:
        x = torch.bernoulli(torch.full((batch, 1, 28, 28), 0.5), generator=g)
    pad = (shape[-1] - 28) // 2
    return F.pad(x, (pad, pad, pad, pad)) if pad else x


def official_parser(src: str):
    """train.py's own ArgumentParser: its add_argument calls, executed alone."""
    tree = ast.parse(open(os.path.join(src, "train.py")).read())
    main = next(n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test))
    keep = [s for s in main.body if ast.unparse(s).startswith(("parser = argparse", "parser.add_argument"))]
    namespace = {"argparse": argparse}
    exec(compile(ast.Module(body=keep, type_ignores=[]), "train.py:argparse", "exec"), namespace)
    return namespace["parser"]


def grey_mixture(logits, num_mix: int, num_bits: int):
    """The official DiscMixLogistic's maths for one channel; log_prob is (B, 1, H, W) so that the
    official reconstruction_loss crops and sums it as it does for MNIST."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    logit_probs, rest = logits[:, :num_mix], logits[:, num_mix:].unsqueeze(1)  # (B, M, H, W), (B, 1, 3M, H, W)
    means, log_scales = rest[:, :, :num_mix], torch.clamp(rest[:, :, num_mix:2 * num_mix], min=-7.0)
    max_val = 2.0 ** num_bits - 1

    def log_prob(x):
        x = (2 * x - 1).unsqueeze(2)  # (B, 1, 1, H, W)
        centered, inv_stdv = x - means, torch.exp(-log_scales)
        plus_in, min_in = inv_stdv * (centered + 1 / max_val), inv_stdv * (centered - 1 / max_val)
        cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
        mid_in = inv_stdv * centered
        log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)
        mid = torch.where(cdf_delta > 1e-5, torch.log(torch.clamp(cdf_delta, min=1e-10)), log_pdf_mid - np.log(max_val / 2))
        lp = torch.where(x < -0.999, plus_in - F.softplus(plus_in), torch.where(x > 0.99, -F.softplus(min_in), mid))
        return torch.logsumexp(lp.sum(1) + F.log_softmax(logit_probs, dim=1), dim=1, keepdim=True)  # (B, 1, H, W)

    return types.SimpleNamespace(log_prob=log_prob)


def build_official(src: str, config: str, batch: int, device: str = "cpu"):
    """The official AutoEncoder on ``device`` with the patches of the module docstring (``Tensor.cuda``
    a no-op only on the CPU), and its loss."""
    import warnings

    import torch
    import torch.nn.functional as F
    from torch import nn
    sys.path.insert(0, src)
    stub = types.ModuleType("tensorboardX")
    stub.SummaryWriter = object
    sys.modules.setdefault("tensorboardX", stub)
    if device == "cpu":
        torch.Tensor.cuda = lambda self, *a, **k: self
    warnings.filterwarnings("ignore")
    import neural_operations
    neural_operations.SYNC_BN = False
    from thirdparty import inplaced_sync_batchnorm
    from thirdparty.swish import Swish

    def bn_swish(self, x):  # SyncBatchNormSwish's own branch at world size 1
        self.num_batches_tracked = self.num_batches_tracked + 1
        out = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                           self.training or not self.track_running_stats, self.momentum, self.eps)
        return Swish.apply(out)

    inplaced_sync_batchnorm.SyncBatchNormSwish.forward = bn_swish
    import model as official_model
    import utils as official_utils
    args = official_parser(src).parse_args(CONFIGS[config]["official"].split())
    if config == "nvae_fashion":  # C_out = M (1 + 3C) for C = 1, and a grey mixture (see above)
        num_mix = args.num_mixture_dec
        official_model.AutoEncoder.init_image_conditional = lambda self, mult: nn.Sequential(
            nn.ELU(), official_model.Conv2D(int(self.num_channels_dec * mult), 4 * num_mix, 3, padding=1, bias=True))
        official_model.AutoEncoder.decoder_output = lambda self, logits: grey_mixture(logits, num_mix, self.num_bits)
    with open(os.devnull, "w") as null:  # it prints the numbers of conv and BN layers
        stdout, sys.stdout = sys.stdout, null
        try:
            model = official_model.AutoEncoder(args, None, official_utils.get_arch_cells(args.arch_instance))
        finally:
            sys.stdout = stdout
    model = model.to(device)
    optimizer = torch.optim.Adamax(model.parameters(), args.learning_rate, weight_decay=args.weight_decay, eps=1e-3)
    alpha = official_utils.kl_balancer_coeff(num_scales=model.num_latent_scales,
                                             groups_per_scale=model.groups_per_scale, fun="square")
    x = images(config, (1, 32, 32), batch).to(device)

    def loss(step):
        logits, _, _, kl_all, _ = model(x)
        recon = official_utils.reconstruction_loss(model.decoder_output(logits), x, crop=model.crop_output)
        kl, _, _ = official_utils.kl_balancer(kl_all, 1.0, kl_balance=True, alpha_i=alpha)
        norm = model.spectral_norm_parallel() + model.batchnorm_loss()
        return torch.mean(recon + kl) + args.weight_decay_norm * norm

    return model, optimizer, loss, x


def build_ours(config: str, batch: int, library: str | None, device: str = "cpu"):
    """Our preset's model on ``device`` (``library``: a folder holding another hvae_lib), and the engine's loss at beta 1."""
    if library:
        sys.path.insert(0, library)
    from hvae_lib.data.contract import dataset_info
    from hvae_lib.models.presets import get_preset
    from hvae_lib.probability.kl_control import kl_objective
    from hvae_lib.probability.objectives import elbo
    from hvae_lib.training.optim import make_optimizer
    from hvae_lib.config import override
    c = override(get_preset(CONFIGS[config].get("preset", config)), CONFIGS[config].get("ours", []))
    info = dataset_info(c.data.name)
    model = c.model.build(info.image_shape, info.bits, info.likelihood).to(device)
    optimizer = make_optimizer(model.parameters(), c.optim)
    x = images(config, info.image_shape, batch).to(device)

    def loss(step):
        out = model(x)
        terms = elbo(out, model.num_dims)
        kl = kl_objective(out.kl_per_group, 1.0, c.optim.free_bits, c.optim.kl_balancing, out.extras["kl_balance_alpha"])
        return terms.recon + kl + model.regularization(step)

    return model, optimizer, loss, x


def saved_bytes(model, loss, step) -> int:
    """Bytes autograd saves for backward in one forward + loss: distinct storages, parameters excluded."""
    import torch
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s  # held, so that no later tensor reuses the address
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = loss(step)
    model.zero_grad(set_to_none=True)
    value.backward()  # frees the graph as a step would
    model.zero_grad(set_to_none=True)
    return sum(s.nbytes() for s in storages.values())


def worker(conn, kind: str, src: str, config: str, batch: int, threads: int, library: str | None, lr: float):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if kind == "official":
        model, optimizer, loss, x = build_official(src, config, batch)
    else:
        model, optimizer, loss, x = build_ours(config, batch, library)
    for group in optimizer.param_groups:  # what both codebases' warm-ups set early on
        group["lr"] = lr
    model.train()
    conn.send(dict(params=sum(p.numel() for p in model.parameters()), input=list(x.shape)))
    step = 0
    while True:
        msg = conn.recv()
        if msg[0] == "step":
            t0, c0 = time.perf_counter(), time.process_time()
            optimizer.zero_grad(set_to_none=True)
            value = loss(step)
            value.backward()
            optimizer.step()
            step += 1
            conn.send(dict(seconds=time.perf_counter() - t0, cpu=time.process_time() - c0, loss=float(value.detach())))
        elif msg[0] == "memory":
            conn.send(saved_bytes(model, loss, step))
        elif msg[0] == "profile":
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(msg[1]):
                    optimizer.zero_grad(set_to_none=True)
                    loss(step).backward()
                    optimizer.step()
            averages = prof.key_averages()
            conn.send(dict(calls_per_step=sum(e.count for e in averages) / msg[1],
                           table=averages.table(sort_by="self_cpu_time_total", row_limit=12)))
        else:
            conn.send(None)
            return


# ----------------------------------------------------------------------------- the parent
def compare(args, config: str, kinds: list[str], ctx, profile: bool) -> dict:
    batch = args.batch or CONFIGS[config]["batch"]
    workers = {}
    for kind in kinds:  # built one after another, each in its own process
        parent, child = ctx.Pipe()
        library = args.baseline if kind == "baseline" else None
        process = ctx.Process(target=worker, args=(child, kind, args.src, config, batch, args.threads, library, args.lr))
        process.start()
        workers[kind] = (process, parent, parent.recv())

    def ask(kind, *msg):
        workers[kind][1].send(msg)
        return workers[kind][1].recv()

    times, cpu = {kind: [] for kind in kinds}, {kind: [] for kind in kinds}
    for i in range(args.warmup + args.steps):
        results = {kind: ask(kind, "step") for kind in kinds}
        for kind in kinds if i >= args.warmup else ():
            times[kind].append(results[kind]["seconds"])
            cpu[kind].append(results[kind]["cpu"])
        print(f"  [{config}] {'step' if i >= args.warmup else 'warm-up'} {i}: " + "  ".join(
            f"{k} {r['seconds']:.3f}s (CPU {r['cpu']:.3f}s)" for k, r in results.items()), flush=True)
    out = {}
    for kind in kinds:
        out[kind] = dict(params=workers[kind][2]["params"], input=workers[kind][2]["input"], batch=batch,
                         step_s=statistics.median(times[kind]), steps_s=[round(t, 4) for t in times[kind]],
                         cpu_s=statistics.median(cpu[kind]), cpus_s=[round(t, 4) for t in cpu[kind]],
                         saved_mib=ask(kind, "memory") / 2**20)
        if profile:
            out[kind]["profile"] = ask(kind, "profile", args.profile_steps)
    for kind in kinds:
        ask(kind, "quit")
        workers[kind][0].join()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", help="folder with the official NVAE files (see the module docstring)")
    p.add_argument("--configs", default="nvae_mnist,nvae_fashion")
    p.add_argument("--baseline", default=None, help="folder holding another hvae_lib to run beside ours")
    p.add_argument("--batch", type=int, default=None, help="override each config's batch size")
    p.add_argument("--steps", type=int, default=20, help="timed steps per contestant (the median is reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2, help="whole comparisons, each with fresh workers")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--profile", action="store_true", help="also profile a few steps (last repeat)")
    p.add_argument("--profile-steps", type=int, default=2)
    p.add_argument("--json", default=None, help="also write every figure here")
    args = p.parse_args()
    sys.path.insert(0, ROOT)  # spawned workers inherit the path
    args.src = os.path.abspath(args.src)
    missing = [f for f in OFFICIAL_FILES if not os.path.isfile(os.path.join(args.src, f))]
    if missing:
        sys.exit(f"{args.src} does not hold the official NVAE files ({', '.join(missing)} missing); extract them "
                 f"from a clone of NVlabs/NVAE as the module docstring says.")
    if args.baseline and not os.path.isdir(os.path.join(args.baseline, "hvae_lib")):
        sys.exit(f"--baseline {args.baseline} holds no hvae_lib folder; pass a checkout of this repository.")
    import multiprocessing

    import torch
    ctx = multiprocessing.get_context("spawn")
    kinds = ["official", "ours"] + (["baseline"] if args.baseline else [])
    load_before = os.getloadavg()
    results = {c: [compare(args, c, kinds, ctx, args.profile and r == args.repeats - 1) for r in range(args.repeats)]
               for c in args.configs.split(",")}
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\ntorch {torch.__version__}, fp32, {args.threads} threads, {os.cpu_count()} CPUs; medians of {args.steps} "
          f"interleaved steps after {args.warmup} warm-up; load average {', '.join(f'{v:.2f}' for v in load_before)} "
          f"before, {load} after\n")
    names = {"official": "official", "ours": "ours", "baseline": f"baseline ({args.baseline})"}
    print("| config | batch | contestant | parameters | step s, wall (median; per repeat) | step s, CPU (median; per "
          "repeat) | saved for backward MiB |")
    print("|---|---:|---|---:|---|---|---:|")
    for config, runs in results.items():
        for kind in kinds:
            r = runs[0][kind]
            wall = " / ".join(f"{run[kind]['step_s']:.3f}" for run in runs)
            cpu = " / ".join(f"{run[kind]['cpu_s']:.3f}" for run in runs)
            print(f"| {config} | {r['batch']} | {names[kind]} | {r['params']:,} | {wall} | {cpu} | {r['saved_mib']:.1f} |")
    for config, runs in results.items():
        ratios = [run["ours"]["step_s"] / run["official"]["step_s"] for run in runs]
        cpu_ratios = [run["ours"]["cpu_s"] / run["official"]["cpu_s"] for run in runs]
        print(f"{config}: ours / official step time {' / '.join(f'{r:.2f}' for r in ratios)} (wall), "
              f"{' / '.join(f'{r:.2f}' for r in cpu_ratios)} (CPU); saved bytes "
              f"{runs[0]['ours']['saved_mib'] / runs[0]['official']['saved_mib']:.2f}")
        for kind, r in runs[-1].items():
            if "profile" in r:
                print(f"\n-- {config} {kind}: {r['profile']['calls_per_step']:.0f} operator calls per step --")
                print(r["profile"]["table"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(results=results, args=vars(args), load_average_after=os.getloadavg()), f, indent=1)


if __name__ == "__main__":
    main()
