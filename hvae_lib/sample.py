"""``python -m hvae_lib.sample CKPT --n 64 --temperature 0.8 --out PNG``: a grid of prior samples."""
from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import save_image

from hvae_lib.analysis.plotting import image_grid
from hvae_lib.config.ranges import COUNT, DEVICE, POSITIVE_COUNT, SEED, ArgumentParser, ConfigError, Range
from hvae_lib.data.contract import DatasetUnavailableError
from hvae_lib.training.checkpoint import CheckpointError
from hvae_lib.training.safe_write import WriteError, write_atomic


def image_file(text: str) -> str:
    """An argparse type: a file name whose extension names an image format (.png, .jpg, ...)."""
    if Path(text).suffix.lower() not in Image.registered_extensions():
        raise argparse.ArgumentTypeError(f"must end in an image extension such as .png or .jpg, got {text}")
    return text


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m hvae_lib.sample", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--n", type=POSITIVE_COUNT.parser(int), default=64)
    p.add_argument("--temperature", type=Range(above=0).parser(float), default=1.0,
                   help="scales every prior sigma (t <= 1 is smoother)")
    p.add_argument("--out", type=image_file, default="samples.png")
    p.add_argument("--seed", type=SEED.parser(int), default=0)
    p.add_argument("--readjust-bn", type=COUNT.parser(int), default=0, metavar="PASSES",
                   help="re-estimate BatchNorm statistics on PASSES sampling passes at this temperature "
                        "first (NVAE's trick; 0 = use the running statistics)")
    p.add_argument("--likelihood-temperature", type=Range(above=0).parser(float), default=1.0,
                   help="NVAE: scales the spread of p(x|z) the pixels are drawn from (default 1, as the official "
                        "evaluation, whatever --temperature is)")
    p.add_argument("--device", type=DEVICE.parser(str), default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from hvae_lib.training.checkpoint import load_model
    from hvae_lib.training.engine import resolve_device

    try:
        model, _, _ = load_model(args.checkpoint, resolve_device(args.device))
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
        from hvae_lib.layers.bn_readjust import sample_with_readjusted_bn

        images = sample_with_readjusted_bn(model, args.n, args.temperature, num_passes=args.readjust_bn, **options)
    else:
        images = model.sample(args.n, temperature=args.temperature, **options)
    try:
        grid = image_grid(images)  # (3, H', W')
        image_format = Image.registered_extensions()[Path(args.out).suffix.lower()]
        write_atomic(args.out, lambda f: save_image(grid, f, format=image_format))
    except WriteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.n} samples at temperature {args.temperature} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
