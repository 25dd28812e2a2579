"""``python -m hvae_lib.evaluate CKPT [--iw-samples K] [--split test]``: print one JSON object.

The two figures the papers report (Chapter 1), over a split, with the EMA weights when the checkpoint
has them, per image in nats and in bits/dim at the data's bit depth:

- ``negative_elbo``: the single-sample negative ELBO, -log p(x|z) + KL for one z ~ q(z|x) per image,
  the Very Deep VAE paper's figure (from the EMA weights, as it reports);
- ``importance_weighted``: the importance-weighted estimate -log (1/K sum_k p(x, z_k) / q(z_k|x)) with
  its K, NVAE's figure (K = 1000 in the paper; a tighter bound, below the negative ELBO).

Two labelled lines go to stderr; stdout holds the JSON (which keeps the flat keys ``neg_elbo_bpd``,
``iw_bpd``, ... of earlier versions) with the data's files, split and evaluation grid.
"""
from __future__ import annotations

import json
import sys

import torch
from tqdm.auto import tqdm

from hvae_lib.config.ranges import COUNT, DEVICE, POSITIVE_COUNT, SEED, ArgumentParser, ConfigError
from hvae_lib.data.contract import DatasetUnavailableError
from hvae_lib.probability.objectives import elbo, importance_weighted_bound, nats_to_bpd
from hvae_lib.training.checkpoint import CheckpointError, load_model


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
        from hvae_lib.training.engine import load_data, protocol, resolve_device

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
    weights = "EMA" if config.optim.ema_rate > 0 else "raw"
    result["negative_elbo"] = {
        "nats": result["neg_elbo_nats"], "bpd": result["neg_elbo_bpd"], "weights": weights,
        "label": f"single-sample negative ELBO ({weights} weights): the Very Deep VAE paper's figure"}
    lines = [f"single-sample negative ELBO, {weights} weights (the VDVAE paper's figure): "
             f"{result['neg_elbo_bpd']:.4f} bits/dim ({result['neg_elbo_nats']:.2f} nats/image)"]
    if args.iw_samples:
        result["importance_weighted"] = {
            "nats": result["iw_nats"], "bpd": result["iw_bpd"], "K": args.iw_samples,
            "label": f"importance-weighted estimate of -log p(x), K={args.iw_samples}: NVAE's figure (the paper's K=1000)"}
        lines.append(f"importance-weighted estimate, K={args.iw_samples} (NVAE's figure; its paper uses K=1000): "
                     f"{result['iw_bpd']:.4f} bits/dim ({result['iw_nats']:.2f} nats/image)")
    print("\n".join(lines), file=sys.stderr)
    print(json.dumps({**result, "bit_depth": info.bits, "split": args.split, "dataset": config.data.name,
                      **protocol(config, data)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
