"""``python -m hvae_lib.import_vdvae EMA.th [--model MODEL.th] [--preset P] --out DIR``: openai's released
VDVAE weights as an hvae_lib checkpoint (Chapter 6).

openai/vdvae publishes plain state_dicts: ``*-model-ema.th`` (the EMA weights, used for evaluation
and sampling) and, for most datasets, ``*-model.th`` (the raw weights, saved from inside
DistributedDataParallel, so every key starts with ``module.``). This command maps their keys onto
:class:`~hvae_lib.models.vdvae.VDVAE` (one tensor is reordered: the output convolution's channels,
from the official NHWC mixture layout to :class:`~hvae_lib.probability.likelihoods.DiscretizedLogisticMixture`'s)
and writes ``DIR/checkpoint.pt`` with the preset's config and the official input normalisation, so

    python -m hvae_lib.evaluate DIR/checkpoint.pt --iw-samples 0
    python -m hvae_lib.sample DIR/checkpoint.pt --temperature 0.8

work on it, and ``python -m hvae_lib.train --preset P --out DIR`` fine-tunes it (a fresh optimiser at
step 0). The preset is found from the tensors' names and shapes when ``--preset`` is not given.
FFHQ-256 weights are evaluated exactly as they were trained: openai's grid and 8-bit encoder input
(``official_grid``, ``data.bits=8``) on openai's seed-5 split, which ``results.json`` and
``evaluate``'s JSON state; fine-tune them with ``--set official_grid=true --set bits=8``.
``benchmarks/vdvae_import_check.py`` checks the import against the official model code.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from hvae_lib.config import override
from hvae_lib.config.ranges import ConfigError
from hvae_lib.data.contract import dataset_info
from hvae_lib.models import build_model
from hvae_lib.models.presets import get_preset, list_presets
from hvae_lib.models.vdvae_official import (
    PAPER_PRESETS,
    OfficialWeightsError,
    find_preset,
    load_official,
    official_to_ours,
)
from hvae_lib.training import checkpoint as ckpt_io
from hvae_lib.training.optim import make_optimizer, make_scheduler

OFFICIAL_PROTOCOL = {"vdvae_ffhq256": ["official_grid=true", "bits=8"]}  # the preset's split is openai's already
GRID_NOTE = "; evaluated on openai's FFHQ-256 grid (official_grid: 8-bit encoder input) and its seed-5 split"


def import_checkpoint(ema_path, out_path, model_path=None, preset: str | None = None, overrides=()) -> dict:
    """Write an hvae_lib checkpoint at ``out_path`` from official files; return a summary."""
    states = {}
    for role, path in (("EMA", ema_path), ("raw", model_path)):
        if path is None:
            continue
        try:
            states[role] = load_official(path)
        except OfficialWeightsError as err:
            raise OfficialWeightsError(f"{path} cannot be imported as official VDVAE {role} weights: {err}.") from None
    if preset is None:
        try:
            preset = find_preset(states["EMA"])
        except OfficialWeightsError as err:
            raise OfficialWeightsError(f"{ema_path} cannot be imported: {err}.") from None
    # openai's FFHQ-256 weights are evaluated as they were trained: its grid and 8-bit encoder input
    # (--set official_grid=false --set bits=0 gives the library's normalised 5-bit grid instead).
    protocol = OFFICIAL_PROTOCOL.get(preset, [])
    config = override(get_preset(preset), protocol + list(overrides))
    if config.model.family != "vdvae":
        raise ConfigError(f"--preset {preset} is a {config.model.family} preset; official VDVAE weights need a vdvae preset.")
    info = dataset_info(config.data.name, config.data.resolution, config.data.bits)
    model = build_model(config, info)
    converted = {}
    for role, state in states.items():
        try:
            converted[role] = official_to_ours(state, model)
        except OfficialWeightsError as err:
            path = ema_path if role == "EMA" else model_path
            raise OfficialWeightsError(f"{path} does not fit the {preset} preset's model: {err}.") from None
    model.load_state_dict(converted.get("raw", converted["EMA"]))
    optimizer = make_optimizer(model.parameters(), config.optim)
    state = ckpt_io.checkpoint_state(
        config, info, model.state_dict(), optimizer, make_scheduler(optimizer, config.optim),
        torch.amp.GradScaler("cpu", enabled=False), ema_state=converted["EMA"] if config.optim.ema_rate > 0 else None,
        imported_from={"ema": str(ema_path), "model": str(model_path) if model_path else None})
    ckpt_io.save_atomic(state, out_path)
    return {"preset": preset, "parameters": sum(p.numel() for p in model.parameters()), "out": str(out_path),
            "raw_weights": "raw" in states, "official_grid": getattr(config.model, "official_grid", False)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hvae_lib.import_vdvae", description=__doc__.split("\n")[0])
    p.add_argument("ema", help="the official *-model-ema.th file")
    p.add_argument("--model", default=None, help="the official *-model.th file (raw weights; optional)")
    p.add_argument("--preset", default=None, help="a vdvae preset (default: found from the weights)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True, help="run folder to write checkpoint.pt into")
    args = p.parse_args(argv)
    if args.preset is not None and args.preset not in dict(list_presets()):
        print(f"error: unknown preset {args.preset!r}; the VDVAE presets are {', '.join(PAPER_PRESETS)}.", file=sys.stderr)
        return 2
    try:
        summary = import_checkpoint(args.ema, Path(args.out) / "checkpoint.pt", args.model, args.preset, args.overrides)
    except (OfficialWeightsError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"imported {summary['parameters']:,} parameters as preset {summary['preset']} into {summary['out']}"
          f"{'' if summary['raw_weights'] else ' (EMA weights only: they serve as the raw weights too)'}"
          f"{GRID_NOTE if summary['official_grid'] else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
