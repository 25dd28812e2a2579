"""Check ``python -m hvae_lib.import_vdvae`` against openai/vdvae's own model code, on the same weights and noise.

    .venv/bin/python benchmarks/vdvae_import_check.py SRC_DIR [--cases small i32_small widths cifar10 ...] [--batch 2]

SRC_DIR holds the official ``vae.py``, ``vae_helpers.py`` and ``hps.py`` (extract them from a
checkout of openai/vdvae, e.g. ``git --git-dir=<mirror> show HEAD:vae.py > SRC_DIR/vae.py``); it is
imported at run time and nothing of it is copied here. openai's released checkpoints cannot be
downloaded on every machine, so for each case the script builds the *official* model from the
official ``hps.py`` preset (plus overrides), perturbs every tensor (so no zero-initialised weight can
hide a wrong mapping), and saves it in the official layouts: the raw weights with DDP's ``module.``
prefix (as ``*-model.th``) and the EMA weights without it (as ``*-model-ema.th``). It imports them
with our command and evaluates both models on the same images (official preprocessing on one side,
images in [0, 1] on the other) and the same noise (the same seed, consumed in the same order):
per-layer KL and the ELBO, in nats per dimension, must agree to 1e-4 relative.

``ffhq256`` and ``ffhq256_small`` (FFHQ-256's official model at width 32 with one block per
resolution, for the CPU) compare the distortion too: the import chooses openai's FFHQ-256 grid for
them (``official_grid``, 8-bit encoder input; see hvae_lib.models.vdvae), so our loss is the
official one.
The last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_vdvae import load_official_vdvae  # noqa: E402

from hvae_lib.import_vdvae import main as import_main  # noqa: E402
from hvae_lib.training.checkpoint import load_model  # noqa: E402

SMALL = dict(width=128, enc_blocks="32x3,32d2,16x3,16d2,8x3,8d2,4x2,4d4,1x2",
             dec_blocks="1x1,4m1,4x2,8m4,8x3,16m8,16x3,32m16,32x3")
WIDTHS = dict(width=16, enc_blocks="32x1,32d2,16x2,16d2,8x2,8d2,4x2,4d4,1x2",
              dec_blocks="1x2,4m1,4x2,8m4,8x2,16m8,16x2,32m16", custom_width_str="16:32,8:64,4:64,1:64")
# name: (official hps preset, official overrides, our preset, our further overrides, image size,
#        compare the distortion too). "widths" is FFHQ-1024's model (custom widths, 2 mixture
# components, its normalisation of x / 255) shrunk to 32x32 images, so that it runs on a CPU.
CASES = {
    "small": ("cifar10", SMALL, "vdvae_cifar10", {}, 32, True),
    "i32_small": ("imagenet32", dict(width=64, zdim=8, enc_blocks="32x2,32d2,16x2,16d2,8x2,8d2,4x2,4d4,1x2",
                                     dec_blocks="1x2,4m1,4x2,8m4,8x2,16m8,16x2,32m16,32x2"), "vdvae_imagenet32", {}, 32, True),
    "widths": ("ffhq1024", WIDTHS, "vdvae_cifar10",
               dict(num_mixtures=2, input_mean=0.4387 * 255, input_std=0.2743 * 255), 32, True),
    "cifar10": ("cifar10", {}, "vdvae_cifar10", {}, 32, True),
    "imagenet32": ("imagenet32", {}, "vdvae_imagenet32", {}, 32, True),
    "imagenet64": ("imagenet64", {}, "vdvae_imagenet64", {}, 64, True),
    "ffhq256": ("ffhq256", {}, "vdvae_ffhq256", {}, 256, True),
    "ffhq256_small": ("ffhq256", dict(width=32, enc_blocks="256x1,256d2,128x1,128d2,64x1,64d2,32x1,32d2,16x1,16d2,"
                                                          "8x1,8d2,4x1,4d4,1x1",
                                      dec_blocks="1x1,4m1,4x1,8m4,8x1,16m8,16x1,32m16,32x1,64m32,64x1,128m64,128x1,256m128"),
                      "vdvae_ffhq256", {}, 256, True),
}
# official data.py: input shift and scale per dataset (ffhq_1024 works on x / 255)
NORMALISATION = {"cifar10": (-120.63838, 1 / 64.16736), "imagenet32": (-116.2373, 1 / 69.37404),
                 "imagenet64": (-115.92961967, 1 / 69.37404), "ffhq_256": (-112.8666757481, 1 / 69.84780273),
                 "ffhq_1024": (-0.4387, 1 / 0.2743)}


def official_hparams(hps, preset: str, overrides: dict, image_size: int):
    argv = ["--hps", preset]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    H = hps.Hyperparams()
    hps.parse_args_and_update_hparams(H, hps.add_vae_arguments(argparse.ArgumentParser()), s=argv)
    H.image_size, H.image_channels = image_size, 3
    return H


def perturb_(model, seed: int) -> None:
    """Move every tensor off its initial value: noise of 0.3 of its spread, or 0.01 for constant ones."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            spread = p.std().item() if p.numel() > 1 else 0.0
            p.add_(torch.randn(p.shape, generator=g) * (0.3 * spread if spread > 0 else 0.01))


def official_pass(model, H, raw: torch.Tensor, seed: int, dtype=torch.float32):
    """Per-layer KL (B, L) and the ELBO terms in nats per dimension, as the official forward computes them."""
    shift, scale = NORMALISATION[H.dataset]
    x = raw.to(dtype) / 255 if H.dataset == "ffhq_1024" else raw.to(dtype)
    x_in = (x + shift) * scale  # (B, H, W, C), official preprocess_func
    target = raw.to(dtype)
    if H.dataset == "ffhq_256":
        target = torch.floor(target / 8) * 8
    target = (target - 127.5) / 127.5
    torch.manual_seed(seed)
    with torch.no_grad():
        activations = model.encoder.forward(x_in)
        px_z, stats = model.decoder.forward(activations)
        distortion = model.decoder.out_net.nll(px_z, target)  # (B,) nats per dim
    kl = torch.stack([s["kl"].sum(dim=(1, 2, 3)) for s in stats], dim=1)  # (B, L)
    dims = raw[0].numel()
    return kl.double(), distortion.double(), (distortion + kl.sum(1) / dims).double()


def our_pass(model, raw: torch.Tensor, seed: int, dtype=torch.float32):
    x = raw.permute(0, 3, 1, 2).to(dtype) / 255  # (B, C, H, W) in [0, 1]
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model(x)
    dims = x[0].numel()
    distortion = -out.log_px_z.double() / dims
    return out.kl_per_group.double(), distortion, distortion + out.kl_per_group.double().sum(1) / dims


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs() / b.abs().clamp(min=1e-12)).max().item()


def excess(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> float:
    """max |a - b| / (atol + rtol |b|): at most 1 where a and b agree as torch.allclose(rtol, atol) says."""
    return ((a - b).abs() / (atol + rtol * b.abs())).max().item()


def run_case(name: str, vae, hps, batch: int, seed: int, folder: Path) -> dict:
    official_preset, overrides, our_preset, our_overrides, size, with_distortion = CASES[name]
    H = official_hparams(hps, official_preset, overrides, size)
    torch.manual_seed(seed)
    raw_model, ema_model = vae.VAE(H).eval(), vae.VAE(H).eval()
    perturb_(raw_model, seed)
    perturb_(ema_model, seed + 1)
    params = sum(p.numel() for p in raw_model.parameters())
    raw_path, ema_path = folder / f"{name}-model.th", folder / f"{name}-model-ema.th"
    torch.save({f"module.{k}": v for k, v in raw_model.state_dict().items()}, raw_path)  # DDP's layout
    torch.save(ema_model.state_dict(), ema_path)
    sets = sum((["--set", f"{k}={v}"] for k, v in {**overrides, **our_overrides}.items()), [])
    out = folder / name
    code = import_main([str(ema_path), "--model", str(raw_path), "--preset", our_preset, "--out", str(out), *sets])
    if code != 0:
        raise SystemExit(f"import of case {name} failed")
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, size, size, 3), generator=g, dtype=torch.uint8)  # NHWC, 8-bit
    result = {"case": name, "official_preset": official_preset, "overrides": overrides, "parameters": params,
              "layers": None}
    for role, official, prefer_ema in (("ema", ema_model, True), ("raw", raw_model, False)):
        ours, _, _ = load_model(out / "checkpoint.pt", prefer_ema=prefer_ema)
        assert sum(p.numel() for p in ours.parameters()) == params
        for dtype in (torch.float32, torch.float64):
            tag = f"{role}_{str(dtype).replace('torch.', '')}"
            official.to(dtype), ours.to(dtype)
            torch.set_default_dtype(dtype)  # the official code makes some tensors in the default dtype
            try:
                kl_o, dist_o, elbo_o = official_pass(official, H, images, seed, dtype)
                kl_u, dist_u, elbo_u = our_pass(ours, images, seed, dtype)
            finally:
                torch.set_default_dtype(torch.float32)
            result["layers"] = kl_o.shape[1]
            result[f"{tag}_kl_max_rel"] = relative(kl_u, kl_o)
            result[f"{tag}_kl_max_abs_nats"] = (kl_u - kl_o).abs().max().item()
            result[f"{tag}_kl_excess"] = excess(kl_u, kl_o)
            if with_distortion:
                result[f"{tag}_elbo_max_rel"] = relative(elbo_u, elbo_o)
                result[f"{tag}_distortion_max_rel"] = relative(dist_u, dist_o)
                result[f"{tag}_official_elbo_nats_per_dim"] = elbo_o.tolist()
            else:
                result[f"{tag}_distortion_ours_minus_official"] = (dist_u - dist_o).tolist()
        official.float()
    # Per-layer KLs: 1e-4 relative, or 1e-5 nats where a layer carries almost nothing and float32 rounding
    # (of the official code as much as ours) dominates; the ELBO and distortion: 1e-4 relative.
    ok_kl = all(v <= 1 for k, v in result.items() if k.endswith("_kl_excess"))
    ok_rest = all(v < 1e-4 for k, v in result.items() if k.endswith("_max_rel") and "_kl_" not in k)
    result["ok"] = ok_kl and ok_rest
    for d in ("float32", "float64"):
        kl_rel = max(v for k, v in result.items() if d in k and k.endswith("_kl_max_rel"))
        kl_abs = max(v for k, v in result.items() if d in k and k.endswith("_kl_max_abs_nats"))
        rest = [v for k, v in result.items() if d in k and k.endswith("_max_rel") and "_kl_" not in k]
        print(f"{name} {d}: {params:,} parameters, {result['layers']} layers; per-layer KL: largest difference "
              f"{kl_rel:.1e} relative, {kl_abs:.1e} nats"
              + (f"; ELBO and distortion: {max(rest):.1e} relative" if rest else " (KLs only)"))
    print(f"{name}: {'ok' if result['ok'] else 'FAIL'}")
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", help="folder with the official vae.py, vae_helpers.py and hps.py")
    p.add_argument("--cases", nargs="+", default=["small", "i32_small", "widths", "cifar10"], choices=list(CASES))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    hps, vae = load_official_vdvae(a.src)

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="vdvae_import_") as tmp:
        results = [run_case(name, vae, hps, a.batch, a.seed, Path(tmp)) for name in a.cases]
    print(json.dumps({"cases": results, "all_ok": all(r["ok"] for r in results), "torch": torch.__version__}))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
