"""One trained Very Deep VAE scored on both 5-bit grids: the library's normalised 5-bit likelihood and
openai's FFHQ-256 loss (``official_grid``), on the same test images.

    .venv/bin/python benchmarks/vdvae_grids.py [--out runs/vdvae_grids] [--steps 300]

A tiny VDVAE (``vdvae_tiny``: 16x16 procedural shapes, no FFHQ needed) is trained from scratch on the
proper 5-bit grid (``data.bits=5``, the library's default for 5-bit data), then its EMA weights are
evaluated twice: with the 5-bit images it was trained on, and as openai's FFHQ-256 code would score
it (``official_grid``: the 8-bit images into the encoder, targets 8 floor(x/8), bins of half-width
1/31 with no normalisation). The two negative ELBOs are printed, in nats per image and bits/dim;
the last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hvae_lib.config import override  # noqa: E402
from hvae_lib.data import load_dataset  # noqa: E402
from hvae_lib.evaluate import evaluate  # noqa: E402
from hvae_lib.models import build_model  # noqa: E402
from hvae_lib.models.presets import get_preset  # noqa: E402
from hvae_lib.training.checkpoint import load_model  # noqa: E402
from hvae_lib.training.engine import Trainer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/vdvae_grids")
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args()
    sets = [f"max_steps={args.steps}", "bits=5", "quiet=true", "eval_every=0", "checkpoint_every=0",
            "train_limit=512", "test_limit=128"]
    config = override(get_preset("vdvae_tiny"), sets)
    Trainer(config, args.out).fit()
    model, config, info = load_model(Path(args.out) / "checkpoint.pt")  # EMA weights
    proper_data = load_dataset("shapes", resolution=16, test_limit=128, bits=5, seed=config.run.seed)
    torch.manual_seed(0)
    proper = evaluate(model, proper_data.test, info.num_dims, progress=False)

    official_config = override(config, ["official_grid=true", "bits=8"])
    eight = load_dataset("shapes", resolution=16, test_limit=128, seed=config.run.seed)
    official_model = build_model(official_config, eight.info).eval()
    official_model.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    official = evaluate(official_model, eight.test, eight.info.num_dims, progress=False)
    print(f"one vdvae_tiny ({sum(p.numel() for p in model.parameters()):,} parameters, {args.steps} steps on the "
          f"proper 5-bit grid), EMA weights, {proper['n_images']} test images:")
    print(f"  library's 5-bit grid:     {proper['neg_elbo_bpd']:.4f} bits/dim ({proper['neg_elbo_nats']:.1f} nats/image)")
    print(f"  openai's FFHQ-256 grid:   {official['neg_elbo_bpd']:.4f} bits/dim ({official['neg_elbo_nats']:.1f} nats/image)")
    print(json.dumps({"proper_5bit": proper, "openai_ffhq256_grid": official, "steps": args.steps,
                      "load_average": os.getloadavg()}))


if __name__ == "__main__":
    main()
