"""``python -m hvae_lib.fid CKPT``: FID and KID of a checkpoint's samples against its training images.

NVAE's protocol by default (50,000 samples at temperature 0.6, BatchNorm re-estimated on 500
sampling passes at that temperature first), every value a flag; the metrics are torch-fidelity's
(:mod:`hvae_lib.analysis.fid`). The reference statistics are cached per dataset and resolution
(``--cache-dir``); the numbers are printed as one JSON object and written into the run's
``results.json`` beside its bits/dim (``--no-record`` leaves it alone).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from hvae_lib.analysis.fid import (
    INCEPTION,
    NVAE_PROTOCOL,
    FidError,
    check_feature_extractor,
    ensure_inception_weights,
    fid_kid,
    reference_name,
)
from hvae_lib.config.ranges import COUNT, DEVICE, POSITIVE_COUNT, SEED, ArgumentParser, ConfigError, Range
from hvae_lib.data.contract import DatasetUnavailableError, default_root
from hvae_lib.training.checkpoint import CheckpointError
from hvae_lib.training.safe_write import WriteError, write_atomic


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m hvae_lib.fid", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--n", type=Range(at_least=2).parser(int), default=NVAE_PROTOCOL["num_samples"],
                   help="samples to draw (NVAE: 50000)")
    p.add_argument("--temperature", type=Range(above=0).parser(float), default=NVAE_PROTOCOL["temperature"],
                   help="scales every prior sigma (NVAE: 0.6)")
    p.add_argument("--readjust-bn", type=COUNT.parser(int), default=NVAE_PROTOCOL["readjust_bn"], metavar="PASSES",
                   help="re-estimate BatchNorm on PASSES sampling passes at --temperature first (NVAE: 500; 0 = no)")
    p.add_argument("--split", choices=("train", "test"), default="train", help="the reference images")
    p.add_argument("--reference-limit", type=COUNT.parser(int), default=0,
                   help="use only the first N reference images (0 = all the run's loader gives)")
    p.add_argument("--batch-size", type=POSITIVE_COUNT.parser(int), default=100)
    p.add_argument("--pixels", choices=("sample", "mean"), default="sample",
                   help="draw the pixels from p(x|z) (NVAE, except binary MNIST, where it takes the mean) or take its mean")
    p.add_argument("--no-kid", action="store_true", help="FID only")
    p.add_argument("--cache-dir", default=None, help="reference features and statistics (default: DATA_ROOT/fid_cache)")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth, where there is no network")
    p.add_argument("--feature-extractor", default=INCEPTION,
                   help="a feature extractor registered with torch-fidelity (the tests register a small one)")
    p.add_argument("--seed", type=SEED.parser(int), default=0)
    p.add_argument("--device", type=DEVICE.parser(str), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-record", action="store_true", help="do not write the numbers into the run's results.json")
    p.add_argument("--quiet", action="store_true", help="no progress bars or torch-fidelity messages")
    return p


def record(results: Path, entries: dict) -> None:
    """Merge ``entries`` into the JSON object at ``results`` (created if missing), atomically; a file
    that is not such an object is refused rather than overwritten."""
    old = {}
    if results.exists():
        try:
            old = json.loads(results.read_text())
        except (OSError, ValueError) as err:
            raise FidError(f"{results} could not be read as JSON ({type(err).__name__}), so the FID was not added to "
                           f"it; mend or move it, or pass --no-record.") from None
        if not isinstance(old, dict):
            raise FidError(f"{results} does not hold a JSON object, so the FID was not added to it; pass --no-record.")
    text = json.dumps(old | entries, indent=2) + "\n"
    write_atomic(results, lambda f: f.write(text.encode()))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from hvae_lib.training.checkpoint import load_model
    from hvae_lib.training.engine import load_data, resolve_device

    try:
        model, config, info = load_model(args.checkpoint, resolve_device(args.device))
        check_feature_extractor(args.feature_extractor)
        weights = args.inception_weights
        if args.feature_extractor == INCEPTION:  # before any work: offline without the file is one sentence
            weights = ensure_inception_weights(weights)
        data = load_data(config)
        reference = data.train if args.split == "train" else data.test
        if args.reference_limit:
            reference = torch.utils.data.Subset(reference, range(min(args.reference_limit, len(reference))))
        name = reference_name(info, len(reference), args.split)
        cache = Path(args.cache_dir) if args.cache_dir else default_root() / "fid_cache"
        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if args.readjust_bn and has_bn and not args.quiet:
            print(f"re-estimating BatchNorm on {args.readjust_bn} sampling passes at temperature {args.temperature}",
                  file=sys.stderr)
        metrics = fid_kid(model, reference, name, args.n, args.temperature, args.readjust_bn, args.batch_size,
                          args.seed, cache, args.feature_extractor, weights, not args.no_kid,
                          args.pixels, verbose=not args.quiet)
        settings = {"samples": args.n, "temperature": args.temperature, "readjust_bn": args.readjust_bn,
                    "pixels": args.pixels, "reference": name, "feature_extractor": args.feature_extractor,
                    "seed": args.seed}
        if not args.no_record:
            record(Path(args.checkpoint).parent / "results.json", {**metrics, "fid_settings": settings})
    except (CheckpointError, ConfigError, DatasetUnavailableError, FidError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # torch-fidelity's own checks (an unknown feature extractor, ...)
        print(f"error: torch-fidelity refused: {err}", file=sys.stderr)
        return 2
    except WriteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({**metrics, **settings, "dataset": info.name}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
