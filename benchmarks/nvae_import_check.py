"""Check ``python -m hvae_lib.import_nvae`` against NVlabs' own NVAE code, on the same weights, images and noise.

    .venv/bin/python benchmarks/nvae_import_check.py SRC_DIR [--cases mnist cifar10 ...] [--dtypes float32 float64]

SRC_DIR holds NVlabs/NVAE's files (``model.py``, ``neural_operations.py``, ``neural_ar_operations.py``,
``distributions.py``, ``utils.py``, ``train.py``, ``thirdparty/``), e.g. extracted from a mirror with
``git --git-dir=<mirror> archive HEAD | tar -x -C SRC_DIR``; they are imported at run time and
nothing of them is copied here. The released checkpoints cannot be downloaded on every machine, so
for each case the script builds NVlabs' ``AutoEncoder`` from the README's training command (the
``args`` namespace its own ``train.py`` parser makes), perturbs every tensor (weights, weight-norm
scales, BatchNorm statistics, so no zero-initialised tensor can hide a wrong mapping), saves it in
the released layout (``{'epoch', 'state_dict', 'optimizer', 'global_step', 'args',
'arch_instance', 'scheduler', 'grad_scalar'}``, synchronised-BatchNorm key names), imports it with
our command, and runs both models on the same images and the same noise (every Gaussian draw of
both comes from one seeded stream, consumed in the same order):

- evaluation (eval mode, as NVlabs' ``test``): per-group KL, log p(x|z) and the importance weight
  log p(x|z) + log p(z) - log q(z|x), per image;
- the BN-readjusted sampling path (NVlabs' ``set_bn`` then ``sample``): both run the same number
  of sampling passes in train mode on the same noise, accumulating the decoder's BatchNorm
  statistics (NVlabs' layers given momentum None, the exact average our readjustment uses instead of
  its 0.05), then sample in eval mode at the same temperature; compared are the re-estimated running
  statistics and the likelihood parameters of the samples.

Reported is the largest relative difference per quantity, in float32 and float64: |ours - official|
/ (|official| + 1e-3) per image and group for the KLs, log p(x|z) and the importance weights; for
the re-estimated BatchNorm statistics (per layer) and the samples' likelihood parameters, the
largest difference relative to the tensor's largest value. The check passes when every float32
figure is below 1e-4. The float64 run sets torch's default dtype to float64, because NVlabs'
``sample`` draws the top group from ``torch.zeros`` of the default dtype. Cases ending in ``_small`` shrink a configuration for the CPU (the flags changed are
listed with it). CPU patches of NVlabs' code (its files are not edited): tensorboardX stubbed,
``Tensor.cuda`` a no-op, synchronised BatchNorm running its single-process branch.
The last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_nvae import CONFIGS as _unused, official_parser  # noqa: E402,F401

from hvae_lib.import_nvae import main as import_main  # noqa: E402
from hvae_lib.layers.bn_readjust import estimate_bn_stats  # noqa: E402
from hvae_lib.probability import residual_normal  # noqa: E402
from hvae_lib.training.checkpoint import load_model  # noqa: E402

COMMON = ("--num_postprocess_cells 2 --num_preprocess_cells 2 --num_latent_per_group 20 --num_cell_per_cond_enc 2 "
          "--num_cell_per_cond_dec 2 --num_preprocess_blocks 1 --num_postprocess_blocks 1 --use_se --res_dist")
README = {  # NVlabs' README training commands, model and data flags
    "mnist": ("--dataset mnist --num_latent_scales 2 --num_groups_per_scale 10 --num_postprocess_cells 3 "
              "--num_preprocess_cells 3 --num_cell_per_cond_enc 2 --num_cell_per_cond_dec 2 --num_latent_per_group 20 "
              "--num_preprocess_blocks 2 --num_postprocess_blocks 2 --weight_decay_norm 1e-2 --num_channels_enc 32 "
              "--num_channels_dec 32 --num_nf 0 --ada_groups --use_se --res_dist"),
    "cifar10": f"--dataset cifar10 --num_channels_enc 128 --num_channels_dec 128 --num_latent_scales 1 "
               f"--num_groups_per_scale 30 --weight_decay_norm 1e-2 --num_nf 1 {COMMON}",
    "celeba64": f"--dataset celeba_64 --num_channels_enc 64 --num_channels_dec 64 --num_latent_scales 3 "
                f"--weight_decay_norm 1e-1 --num_groups_per_scale 20 --num_nf 1 --ada_groups {COMMON}",
    "imagenet32": f"--dataset imagenet_32 --num_channels_enc 192 --num_channels_dec 192 --num_latent_scales 1 "
                  f"--num_groups_per_scale 28 --num_nf 1 --weight_decay_norm 1e-2 --weight_decay_norm_anneal "
                  f"--weight_decay_norm_init 1e0 {COMMON}",
    "celebahq256": f"--dataset celeba_256 --num_channels_enc 30 --num_channels_dec 30 --num_latent_scales 5 "
                   f"--weight_decay_norm 1e-2 --num_groups_per_scale 16 --num_nf 2 --ada_groups --min_groups_per_scale 4 "
                   f"--weight_decay_norm_anneal --weight_decay_norm_init 1. --num_x_bits 5 {COMMON}",
    "ffhq256": f"--dataset ffhq --num_channels_enc 30 --num_channels_dec 30 --num_latent_scales 5 "
               f"--weight_decay_norm 1e-1 --num_groups_per_scale 16 --num_nf 2 --ada_groups --min_groups_per_scale 4 "
               f"--weight_decay_norm_anneal --weight_decay_norm_init 1. --num_x_bits 5 {COMMON}",
}
# name: (README command, flags that shrink it for the CPU, expected preset). The multiscale CIFAR-10
# checkpoint's command is not published: "cifar10_multiscale_small" is a 2-scale CIFAR-10 model that
# no preset fits, to check the import from the checkpoint's args alone. A "_small" case keeps the
# command's layout (scales, cells, flows, bit depth, image size) with fewer channels and groups, so
# that no preset fits it either and it is built from its flags.
CASES = {
    "mnist": ("mnist", "", "nvae_mnist"),
    "cifar10": ("cifar10", "", "nvae_cifar10"),
    "cifar10_multiscale_small": ("cifar10", "--num_latent_scales 2 --num_groups_per_scale 4 --ada_groups "
                                 "--num_channels_enc 32 --num_channels_dec 32", "nvae_cifar10"),
    "celeba64": ("celeba64", "", "nvae_celeba64"),
    "imagenet32": ("imagenet32", "", "nvae_imagenet32"),
    "celebahq256": ("celebahq256", "", "nvae_celebahq256"),
    "ffhq256": ("ffhq256", "", "nvae_ffhq256"),
    "mnist_small": ("mnist", "--num_channels_enc 8 --num_channels_dec 8 --num_groups_per_scale 4", "nvae_mnist"),
    "cifar10_small": ("cifar10", "--num_channels_enc 16 --num_channels_dec 16 --num_groups_per_scale 6", "nvae_cifar10"),
    "celeba64_small": ("celeba64", "--num_channels_enc 8 --num_channels_dec 8 --num_groups_per_scale 4", "nvae_celeba64"),
    "imagenet32_small": ("imagenet32", "--num_channels_enc 16 --num_channels_dec 16 --num_groups_per_scale 6",
                         "nvae_imagenet32"),
    "celebahq256_small": ("celebahq256", "--num_channels_enc 8 --num_channels_dec 8 --num_groups_per_scale 4 "
                          "--min_groups_per_scale 1", "nvae_celebahq256"),
    "ffhq256_small": ("ffhq256", "--num_channels_enc 8 --num_channels_dec 8 --num_groups_per_scale 4 "
                      "--min_groups_per_scale 1", "nvae_ffhq256"),
}
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "celeba_64": (3, 64, 64), "imagenet_32": (3, 32, 32),
          "celeba_256": (3, 256, 256), "ffhq": (3, 256, 256)}


# ----------------------------------------------------------------------------- NVlabs' side
def load_official(src: str):
    """NVlabs' modules with the CPU patches of the module docstring."""
    sys.path.insert(0, src)
    stub = types.ModuleType("tensorboardX")
    stub.SummaryWriter = object
    sys.modules.setdefault("tensorboardX", stub)
    torch.Tensor.cuda = lambda self, *a, **k: self
    warnings.filterwarnings("ignore")
    import neural_operations
    from thirdparty import inplaced_sync_batchnorm
    from thirdparty.swish import Swish

    def bn_swish(self, x):  # SyncBatchNormSwish's single-process branch
        if self.training and self.track_running_stats:
            self.num_batches_tracked = self.num_batches_tracked + 1
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        out = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                           self.training or not self.track_running_stats, momentum, self.eps)
        return Swish.apply(out)

    def sync_bn(self, x):  # neural_operations.SyncBatchNorm around nn.SyncBatchNorm, at one process
        bn = self.bn
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                            bn.training or not bn.track_running_stats, momentum, bn.eps)

    inplaced_sync_batchnorm.SyncBatchNormSwish.forward = bn_swish
    neural_operations.SyncBatchNorm.forward = sync_bn
    neural_operations.SYNC_BN = True  # the released files' BatchNorm names
    import distributions
    import model as official_model
    import utils as official_utils
    return types.SimpleNamespace(model=official_model, utils=official_utils, distributions=distributions,
                                 parser=official_parser(src))


def build_official(official, flags: str):
    args = official.parser.parse_args(flags.split())
    args.num_total_iter = 1000
    arch = official.utils.get_arch_cells(args.arch_instance)
    with open(os.devnull, "w") as null:  # it prints the numbers of conv and BN layers
        stdout, sys.stdout = sys.stdout, null
        try:
            model = official.model.AutoEncoder(args, None, arch)
        finally:
            sys.stdout = stdout
    return model, args, arch


@torch.no_grad()
def perturb(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            continue
        noise = torch.randn(t.shape, generator=g, dtype=t.dtype)
        if name.endswith("running_var"):
            t.mul_(torch.exp(0.3 * noise)).add_(0.05)
        elif name.endswith("running_mean"):
            t.add_(0.1 * noise)
        else:
            t.add_(0.05 * (t.std() if t.numel() > 1 else 1.0) * noise + 0.01 * noise)


def save_released(model, args, arch, path: Path) -> None:
    optimizer = torch.optim.Adamax(model.parameters(), 1e-2, weight_decay=3e-4, eps=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 10.0, eta_min=1e-4)
    torch.save({"epoch": 1, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "global_step": 10,
                "args": args, "arch_instance": arch, "scheduler": scheduler.state_dict(),
                "grad_scalar": torch.amp.GradScaler("cpu", 2.0**10).state_dict()}, path)


# ----------------------------------------------------------------------------- one noise stream for both
class Noise:
    """Every Gaussian draw of both models comes from here: the same seed gives both the same eps."""

    def __init__(self):
        self.generator = None

    def reset(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def eps(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.generator, dtype=torch.float64).to(like.dtype)


def patch_noise(official, noise: Noise) -> None:
    official.distributions.sample_normal_jit = lambda mu, sigma: (noise.eps(mu) * sigma + mu, None)
    residual_normal.NVAENormal.rsample = lambda self: self.mu + self.sigma * noise.eps(self.mu)


def rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Largest |ours - theirs| / (|theirs| + 1e-3), element by element (per image and group)."""
    return float(((ours.double() - theirs.double()).abs() / (theirs.double().abs() + 1e-3)).max())


def rel_tensor(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Largest |ours - theirs| relative to the tensor's largest |theirs| (for statistics and network
    outputs, whose elements near zero carry the rounding of their large neighbours)."""
    return float((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max())


# ----------------------------------------------------------------------------- one comparison
def images(dataset: str, bits: int, batch: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(ours, official): the same images in [0, 1] on the bit grid; MNIST binary, padded to 32x32 for NVlabs."""
    g = torch.Generator().manual_seed(7)
    shape = SHAPES[dataset]
    if dataset == "mnist":
        x = torch.bernoulli(torch.full((batch, *shape), 0.3), generator=g)
        return x.to(dtype), F.pad(x, (2, 2, 2, 2)).to(dtype)
    x8 = torch.randint(0, 256, (batch, *shape), generator=g)
    x8[:, :, 0, :4] = torch.tensor([0, 254, 255, 253])  # the grid's edges and NVlabs' 0.99 edge case
    x = torch.div(x8, 2 ** (8 - bits), rounding_mode="floor").to(dtype) / (2**bits - 1)
    return x, x


@torch.no_grad()
def compare(official, case: str, dtype, batch: int, passes: int, temperature: float, folder: Path) -> dict:
    readme, shrink, preset = CASES[case]
    flags = f"{README[readme]} {shrink}".strip()
    torch.manual_seed(0)
    model, args, arch = build_official(official, flags)
    perturb(model, 1)
    path = folder / f"{case}.pt"
    save_released(model, args, arch, path)
    with open(os.devnull, "w") as null:
        stdout, sys.stdout = sys.stdout, null
        try:
            status = import_main([str(path), "--out", str(folder / case)])
        finally:
            sys.stdout = stdout
    if status != 0:
        raise SystemExit(f"{case}: the import failed (status {status})")
    ours, config, info = load_model(folder / case / "checkpoint.pt")
    saved = torch.load(folder / case / "checkpoint.pt", weights_only=True)
    model, ours = model.to(dtype).eval(), ours.to(dtype).eval()
    x_ours, x_official = images(args.dataset, args.num_x_bits if args.dataset != "mnist" else 1, batch, dtype)
    noise = Noise()
    patch_noise(official, noise)

    noise.reset(11)
    logits, log_q, log_p, kl_all, _ = model(x_official)
    output = model.decoder_output(logits)
    log_px_official = -official.utils.reconstruction_loss(output, x_official, crop=model.crop_output)
    noise.reset(11)
    out = ours(x_ours)
    result = {"kl_per_group": rel(out.kl_per_group, torch.stack(kl_all, 1)),
              "log_px_z": rel(out.log_px_z, log_px_official),
              "log_importance_weight": rel(out.log_px_z - out.log_q_minus_log_p, log_px_official - log_q + log_p)}

    # BN readjustment at a temperature, then sampling in eval mode.
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    model.train()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    noise.reset(21)
    for _ in range(passes):
        model.sample(batch, temperature)
    model.eval()
    noise.reset(21)
    estimated = estimate_bn_stats(ours, temperature, passes, batch)
    ours.eval()
    ours_bns = [m for m in ours.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    ran = [m for m in bns if m.num_batches_tracked.item() > 0]
    result["readjusted_layers"] = f"{len(estimated)} of {len(ours_bns)} (NVlabs: {len(ran)})"
    # Layers match in module order within the decoder: pair them by their mapped names.
    from hvae_lib.models.nvae_official import official_key_map
    keys = official_key_map(ours)
    official_modules = dict(model.named_modules())
    ours_names = {id(m): n for n, m in ours.named_modules()}
    worst = 0.0
    for i, (mean, var, _) in estimated.items():
        name = ours_names[id(ours_bns[i])]
        theirs = official_modules[keys[f"{name}.running_mean"].rsplit(".", 1)[0]]
        worst = max(worst, rel_tensor(mean, theirs.running_mean), rel_tensor(var, theirs.running_var))
        ours_bns[i].running_mean.copy_(mean)
        ours_bns[i].running_var.copy_(var)
    result["readjusted_bn_stats"] = worst
    noise.reset(31)
    logits = model.sample(batch, temperature)
    noise.reset(31)
    s, _, _, _ = ours.top_down(batch, None, 0, temperature)
    params = ours.head.conv(s)
    order = ours_params_in_official_order(ours, params)
    top, left, h, w = ours.head.crop
    crop = (slice(None), slice(None), slice(top, top + h), slice(left, left + w))  # MNIST: 28x28 of the 32x32 canvas
    result["readjusted_sample_params"] = rel_tensor(order[crop], logits[crop])
    result.update(preset=saved["imported_from"]["preset"], expected_preset=preset, flags=flags,
                  parameters=sum(p.numel() for p in ours.parameters()), batch=batch)
    return result


def ours_params_in_official_order(model, params: torch.Tensor) -> torch.Tensor:
    from hvae_lib.models.nvae_official import _output_order

    order = _output_order(model)
    return params if order is None else params[:, torch.argsort(order)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", help="folder with NVlabs/NVAE's files (see the module docstring)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--passes", type=int, default=3, help="BN readjustment passes (NVlabs' evaluate.py runs 500)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--jsonl", default=None, help="also append each result to this file as it comes")
    args = p.parse_args()
    missing = [f for f in ("model.py", "neural_operations.py", "neural_ar_operations.py", "distributions.py", "utils.py",
                           "train.py", "thirdparty/swish.py") if not os.path.isfile(os.path.join(args.src, f))]
    if missing:
        sys.exit(f"{args.src} does not hold NVlabs' NVAE files ({', '.join(missing)} missing); extract them as the "
                 f"module docstring says.")
    torch.set_num_threads(args.threads)
    official = load_official(os.path.abspath(args.src))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            for name in args.dtypes:
                t0 = time.perf_counter()
                torch.set_default_dtype(getattr(torch, name))  # NVlabs' sample() makes its top z with torch.zeros
                try:
                    r = compare(official, case, getattr(torch, name), args.batch, args.passes, args.temperature, Path(tmp))
                finally:
                    torch.set_default_dtype(torch.float32)
                r["seconds"] = round(time.perf_counter() - t0, 1)
                results[f"{case}/{name}"] = r
                if args.jsonl:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps({"case": case, "dtype": name, **r, "load_average": os.getloadavg()}) + "\n")
                figures = {k: v for k, v in r.items() if isinstance(v, float) and k != "seconds"}
                print(f"{case:26s} {name}: " + "  ".join(f"{k} {v:.1e}" for k, v in figures.items())
                      + f"  preset {r['preset']}  {r['parameters']:,} parameters  {r['seconds']}s", flush=True)
    failed = [k for k, r in results.items() if k.endswith("float32") and max(
        v for n, v in r.items() if isinstance(v, float) and n != "seconds") >= 1e-4]
    print(json.dumps({"results": results, "passed": not failed, "failed": failed,
                      "load_average": os.getloadavg(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
