"""``python -m hvae_lib.sample CKPT --n 64 --temperature 0.8 --out PNG``: a grid of prior samples."""
from __future__ import annotations

import argparse
import inspect
import sys

import torch

from .checkpoint import CheckpointError
from .config import ConfigError
from .data import DatasetUnavailableError
from .plotting import save_grid


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hvae_lib.sample", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="scales every prior sigma (t <= 1 is smoother)")
    p.add_argument("--likelihood-temperature", type=float, default=1.0,
                   help="NVAE: scales the spread of p(x|z) the pixels are drawn from (default 1, as the official "
                        "evaluation, whatever --temperature is)")
    p.add_argument("--out", default="samples.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--readjust-bn", type=int, default=0, metavar="PASSES",
                   help="re-estimate BatchNorm statistics on PASSES sampling passes at this temperature "
                        "first (NVAE's trick; 0 = use the running statistics)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.n < 1 or args.temperature <= 0 or args.likelihood_temperature <= 0:
        print("error: --n must be at least 1 and --temperature and --likelihood-temperature positive.", file=sys.stderr)
        return 2
    from .evaluate import load_model

    try:
        model, _, _ = load_model(args.checkpoint, args.device)
    except (CheckpointError, ConfigError, DatasetUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    options = {}
    if args.likelihood_temperature != 1.0:
        if "likelihood_temperature" not in inspect.signature(model.sample).parameters:
            print(f"error: --likelihood-temperature applies to NVAE checkpoints; this one holds a "
                  f"{type(model).__name__}, whose samples draw the pixels at t = 1.", file=sys.stderr)
            return 2
        options["likelihood_temperature"] = args.likelihood_temperature
    torch.manual_seed(args.seed)
    if args.readjust_bn > 0:
        from .bn_readjust import sample_with_readjusted_bn

        images = sample_with_readjusted_bn(model, args.n, args.temperature, num_passes=args.readjust_bn, **options)
    else:
        images = model.sample(args.n, temperature=args.temperature, **options)
    save_grid(images, args.out)
    print(f"wrote {args.n} samples at temperature {args.temperature} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
