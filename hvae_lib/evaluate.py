"""``python -m hvae_lib.evaluate CKPT [--iw-samples K] [--split test]``: print one JSON object.

The negative ELBO and the importance-weighted bound (Chapter 1) over a split, with the EMA weights
when the checkpoint has them. Per image in nats and in bits/dim at the data's bit depth.
"""
from __future__ import annotations

import json
import sys

import torch
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, load_checkpoint
from .config import ConfigError, from_dict
from .data import DatasetInfo, DatasetUnavailableError
from .objectives import elbo, importance_weighted_bound, nats_to_bpd
from .ranges import ArgumentParser, Range

# The values each argument accepts (evaluate's and sample's); a value outside is one error line.
COUNT, POSITIVE_COUNT = Range(at_least=0), Range(at_least=1)
SEED = Range(at_least=0, at_most=2**32 - 1)
DEVICE = Range(one_of=("cpu", "cuda"), pattern=r"cuda:\d+", pattern_text="cuda:<index>")


def load_model(path, device="cpu", prefer_ema: bool = True):
    """(model in eval mode, config, data info) from a checkpoint written by the training engine.

    The EMA weights are used when the checkpoint has them. No dataset is needed.
    """
    from .engine import build_model

    saved = load_checkpoint(path)
    missing = {"config", "data_info", "model"} - set(saved)
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(sorted(missing))}; it was not written by this version of the training engine.")
    config = from_dict(saved["config"])
    info = DatasetInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["data_info"].items()})
    model = build_model(config, info)
    weights = saved["ema"] if prefer_ema and saved.get("ema") is not None else saved["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not match the model its config describes ({str(err).splitlines()[0][:150]}).") from None
    return model.to(device).eval(), config, info


@torch.no_grad()
def evaluate(model, dataset, num_dims: int, iw_samples: int = 0, batch_size: int = 64, limit: int = 0,
             device="cpu", progress: bool = True) -> dict:
    n = min(len(dataset), limit) if limit else len(dataset)
    sums = {"neg_elbo": 0.0, "iw": 0.0}
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="evaluate"):
        x = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, n))]).to(device)
        sums["neg_elbo"] += -elbo(model(x), num_dims).elbo.sum().item()
        if iw_samples:
            sums["iw"] += -importance_weighted_bound(model, x, iw_samples).sum().item()
    result = {"neg_elbo_nats": sums["neg_elbo"] / n, "neg_elbo_bpd": nats_to_bpd(sums["neg_elbo"] / n, num_dims)}
    if iw_samples:
        result.update(iw_nats=sums["iw"] / n, iw_bpd=nats_to_bpd(sums["iw"] / n, num_dims))
    return result | {"iw_samples": iw_samples, "n_images": n}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m hvae_lib.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--iw-samples", type=COUNT.parser(int), default=100, help="importance samples K (0 = ELBO only)")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--limit", type=COUNT.parser(int), default=0, help="evaluate only the first N images (0 = all)")
    p.add_argument("--batch-size", type=POSITIVE_COUNT.parser(int), default=64)
    p.add_argument("--device", type=DEVICE.parser(str), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=SEED.parser(int), default=0, help="seeds the z samples, so a rerun prints the same numbers")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it goes to stderr anyway)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .engine import load_data, resolve_device

        device = resolve_device(args.device)
        torch.manual_seed(args.seed)
        model, config, info = load_model(args.checkpoint, device)
        data = load_data(config)
        dataset = data.test if args.split == "test" else data.train
        result = evaluate(model, dataset, info.num_dims, args.iw_samples, args.batch_size, args.limit,
                          device, progress=not args.quiet)
    except (CheckpointError, ConfigError, DatasetUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({**result, "bit_depth": info.bits, "split": args.split, "dataset": config.data.name}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
