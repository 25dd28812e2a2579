"""``python -m hvae_lib.latents VERB CKPT ...``: encode, decode, reconstruct, interpolate, levels.

What a trained or imported model does with its latents (:mod:`hvae_lib.analysis.latents` holds the
functions; this is the command line on them), for any family: ConvVAE, Ladder VAE, NVAE, VDVAE.

    encode       images -> the latents of every group (a tensor file, --out latents.pt)
    decode       a latents file -> images (the top --groups from the file, the prior below)
    reconstruct  images -> a grid: the images, then their decodes from the top --groups
    interpolate  two images -> a grid from one to the other through the top --groups' latents
    levels       images -> the posterior down to each level and the prior below (VDVAE's Fig. 4)

Images are files given after the checkpoint (of the model's size and channel count) or, without
files, the checkpoint's test set (``--index``). Every verb takes ``--temperature`` (one number, or
one per level, top first) and ``--readjust-bn PASSES`` (NVAE's BatchNorm re-estimated at that
temperature first, cached; models without BatchNorm need none).
"""
from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import save_image

from hvae_lib.analysis import latents as lib
from hvae_lib.analysis.plotting import image_grid
from hvae_lib.config.ranges import COUNT, DEVICE, POSITIVE_COUNT, SEED, ArgumentParser, ConfigError, Range
from hvae_lib.data.contract import DatasetUnavailableError
from hvae_lib.data.image_files import ImageFileError, read_image_files
from hvae_lib.training.checkpoint import CheckpointError
from hvae_lib.training.safe_write import WriteError, write_atomic

FORMAT = "hvae_lib.latents/1"
VERBS = ("encode", "decode", "reconstruct", "interpolate", "levels")
OUT = {"encode": "latents.pt", "decode": "decoded.png", "reconstruct": "reconstructions.png",
       "interpolate": "interpolation.png", "levels": "levels.png"}


def temperatures(text: str):
    """An argparse type: one temperature or a comma list (one per level), each > 0."""
    parse = Range(above=0).parser(float)
    values = [parse(part) for part in text.split(",")]
    return values[0] if len(values) == 1 else values


def labels(text: str) -> list[int]:
    return [COUNT.parser(int)(part) for part in text.split(",")]


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m hvae_lib.latents", description=__doc__.split("\n")[0])
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=ArgumentParser)
    for verb in VERBS:
        v = verbs.add_parser(verb, help=[line for line in __doc__.splitlines() if line.strip().startswith(verb)][0]
                             .split(None, 1)[1])
        v.add_argument("checkpoint")
        if verb == "decode":
            v.add_argument("latents", help="a file written by `encode` (or `reconstruct --save-latents`)")
        else:
            v.add_argument("images", nargs="*", help="image files (default: the checkpoint's test set, --index)")
            v.add_argument("--index", type=COUNT.parser(int), nargs="+", default=None,
                           help="test-set images to use (default: the first --n; interpolate: 0 1)")
            v.add_argument("--n", type=POSITIVE_COUNT.parser(int), default=3 if verb == "levels" else 8,
                           help="how many test-set images without --index")
        v.add_argument("--temperature", type=temperatures, default=1.0,
                       help="scales every prior sigma: one number, or one per level (top first, comma separated)")
        v.add_argument("--readjust-bn", type=COUNT.parser(int), default=0, metavar="PASSES",
                       help="re-estimate BatchNorm on PASSES sampling passes at --temperature first (NVAE)")
        v.add_argument("--by", choices=lib.LEVELS, default=None,
                       help="what a level is: resolution (default where the groups have several) or group")
        v.add_argument("--pixels", choices=lib.PIXELS, default="mean",
                       help="the likelihood's mean image (default) or pixels drawn from it")
        v.add_argument("--seed", type=SEED.parser(int), default=0)
        v.add_argument("--device", type=DEVICE.parser(str), default="cuda" if torch.cuda.is_available() else "cpu")
        v.add_argument("--out", default=OUT[verb])
        if verb in ("encode", "reconstruct"):
            v.add_argument("--sample", action="store_true",
                           help="draw the latents from the posterior instead of taking its mean")
        if verb == "reconstruct":
            v.add_argument("--save-latents", default=None, metavar="FILE.pt", help="also write the latents there")
        if verb in ("decode", "reconstruct", "interpolate"):
            v.add_argument("--groups", type=COUNT.parser(int), default=1 if verb == "interpolate" else None,
                           help="top groups taken from the images (default: all; interpolate: 1); the prior below")
        if verb in ("decode", "reconstruct", "levels"):
            v.add_argument("--draws", type=POSITIVE_COUNT.parser(int), default=6 if verb == "levels" else 1,
                           help="prior draws for the groups below (rows)")
        if verb == "interpolate":
            v.add_argument("--steps", type=Range(at_least=2).parser(int), default=8)
            v.add_argument("--rest", choices=lib.RESTS, default="posterior",
                           help="groups below --groups: their posterior means interpolated too, or the prior "
                                "(the same noise at every step)")
            v.add_argument("--method", choices=lib.METHODS, default="slerp")
        if verb == "levels":
            v.add_argument("--levels", type=labels, default=None,
                           help="only these levels (resolutions, or group counts with --by group), comma separated")
    return p


def input_images(args, model, config) -> torch.Tensor:
    """The images a verb works on: the files given, else test-set images."""
    if args.images:
        return read_image_files(args.images, model.image_shape, model.bits)
    from hvae_lib.training.engine import load_data

    test = load_data(config).test
    index = args.index if args.index is not None else list(range(2 if args.verb == "interpolate" else args.n))
    bad = [i for i in index if i >= len(test)]
    if bad:
        raise ValueError(f"--index {bad[0]} is outside the test set of {config.data.name} ({len(test)} images: "
                         f"0 to {len(test) - 1}).")
    return torch.stack([test[i][0] for i in index])  # (B, C, H, W)


def write_png(path: str, images: torch.Tensor, nrow: int) -> None:
    if Path(path).suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"--out must end in an image extension such as .png, got {path}.")
    fmt = Image.registered_extensions()[Path(path).suffix.lower()]
    write_atomic(path, lambda f: save_image(image_grid(images, nrow), f, format=fmt))


def write_latents(path: str, latents, x, args) -> None:
    if Path(path).suffix != ".pt":
        raise ValueError(f"The latents file must end in .pt, got {path}.")
    state = {"format": FORMAT, "latents": [z.cpu() for z in latents], "images": x.cpu(),
             "posterior": "sample" if args.sample else "mean", "checkpoint": str(args.checkpoint)}
    write_atomic(path, lambda f: torch.save(state, f))


def read_latents(path: str) -> list[torch.Tensor]:
    if not Path(path).is_file():
        raise ValueError(f"No latents file at {path}; write one with `python -m hvae_lib.latents encode CKPT --out {path}`.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # junk, or a pickle a weights-only load refuses
        raise ValueError(f"{path} could not be read as a latents file ({type(err).__name__}); write one with "
                         f"`python -m hvae_lib.latents encode`.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a latents file of hvae_lib (no '{FORMAT}' marker); write one with "
                         f"`python -m hvae_lib.latents encode`.")
    return state["latents"]


def run(args, model, config) -> str:
    """Do the verb; returns the line to print."""
    by = args.by or lib.default_level_kind(model)
    t = args.temperature
    group_t = lib.per_group_temperatures(model, t, by)
    about_t = f"temperature {t}" if not isinstance(t, list) else f"temperatures {','.join(map(str, t))} per level"
    if args.verb == "decode":
        latents = read_latents(args.latents)
        images = lib.decode(model, latents, args.groups, args.draws, group_t, args.pixels, args.seed)
        write_png(args.out, images.flatten(0, 1), nrow=images.shape[1])
        return (f"wrote {images.shape[1]} images x {args.draws} draws from the top {args.groups or len(latents)} of "
                f"{len(lib.latent_shapes(model))} groups ({about_t} below) to {args.out}")
    x = input_images(args, model, config).to(next(model.parameters()).device)
    model.check_input(x)
    if args.verb == "encode":
        latents = lib.encode(model, x, not args.sample, args.seed)
        write_latents(args.out, latents, x, args)
        shapes = ", ".join("x".join(map(str, s["shape"])) for s in lib.latent_summary(latents))
        return f"wrote the latents of {x.shape[0]} images ({len(latents)} groups: {shapes}) to {args.out}"
    if args.verb == "reconstruct":
        num = lib.check_num_groups(model, args.groups)
        if args.save_latents:
            write_latents(args.save_latents, lib.encode(model, x, not args.sample, args.seed), x, args)
        images = lib.reconstruct(model, x, num, not args.sample, args.draws, group_t, args.pixels, args.seed)
        write_png(args.out, torch.cat([x.unsqueeze(0), images]).flatten(0, 1), nrow=x.shape[0])
        return (f"wrote {x.shape[0]} images (first row) and {args.draws} row(s) decoded from the top {num} of "
                f"{len(lib.latent_shapes(model))} groups to {args.out}")
    if args.verb == "interpolate":
        if x.shape[0] != 2:
            raise ValueError(f"interpolate takes two images, got {x.shape[0]}; pass two files or --index A B.")
        frames = lib.interpolate(model, x[:1], x[1:], args.steps, args.groups, args.rest, args.method, group_t,
                                 args.pixels, args.seed)  # (steps, 1, C, H, W)
        write_png(args.out, torch.cat([x[:1], frames[:, 0], x[1:]]), nrow=args.steps + 2)
        return (f"wrote {args.steps} {args.method} steps between the two images (first and last) through the top "
                f"{args.groups} group(s), the rest from the {args.rest}, to {args.out}")
    cuts, images = lib.decode_by_level(model, x, args.draws, args.seed, t, args.pixels, by)  # t: one per level
    rows = list(range(len(cuts)))
    if args.levels is not None:
        unknown = [level for level in args.levels if level not in cuts[1:]]
        if unknown:
            raise ValueError(f"Level {unknown[0]} is not one of this model's levels by {by}: "
                             f"{', '.join(map(str, cuts[1:]))}.")
        rows = [0] + [cuts.index(level) for level in args.levels]
    names = lib.level_names(cuts, by)
    figure = plot_levels(x, images[rows], [names[r] for r in rows], about_t)
    if Path(args.out).suffix.lower() not in (".png", ".pdf", ".svg", ".jpg"):
        raise ValueError(f"--out must end in .png, .pdf, .svg or .jpg, got {args.out}.")
    write_atomic(args.out, lambda f: figure.savefig(f, format=Path(args.out).suffix[1:].replace("jpg", "jpeg"),
                                                     dpi=120, bbox_inches="tight"))
    return f"wrote {len(rows)} rows ({', '.join(names[r] for r in rows)}) x {args.draws} draws for {x.shape[0]} images to {args.out}"


def plot_levels(x: torch.Tensor, images: torch.Tensor, names: list[str], about_t: str):
    """One panel per image: the image on the left of every row, then the draws; one row per level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, draws, b, _, h, w = images.shape
    fig, axes = plt.subplots(1, b, figsize=(1.2 + 0.45 * (draws + 1) * b, 0.5 + 0.45 * rows), squeeze=False)
    for i, ax in enumerate(axes[0]):
        panel = torch.cat([torch.cat([x[i:i + 1].cpu(), images[k, :, i].cpu()]) for k in range(rows)])
        ax.imshow(image_grid(panel, nrow=draws + 1).permute(1, 2, 0).numpy())
        ax.set_title(f"image {i}, then {draws} draws ({about_t})", fontsize=8)
        ax.axis("off")
        if i == 0:
            for k, name in enumerate(names):  # make_grid pads 2 pixels around each image
                ax.text(-3, 2 + k * (h + 2) + h / 2, name, ha="right", va="center", fontsize=8)
    return fig


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from hvae_lib.layers.bn_readjust import readjusted_bn
    from hvae_lib.training.checkpoint import load_model
    from hvae_lib.training.engine import resolve_device

    try:
        model, config, _ = load_model(args.checkpoint, resolve_device(args.device))
        group_t = lib.per_group_temperatures(model, args.temperature, args.by or lib.default_level_kind(model))
        bn_t = args.temperature if isinstance(args.temperature, float) else group_t
        with readjusted_bn(model, bn_t, args.readjust_bn) if args.readjust_bn else nullcontext():
            line = run(args, model, config)
    except (CheckpointError, ConfigError, DatasetUnavailableError, ImageFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except WriteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
