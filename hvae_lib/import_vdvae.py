"""``python -m hvae_lib.import_vdvae EMA.th [--model MODEL.th] [--preset P] --out DIR``: openai's released
VDVAE weights as an hvae_lib checkpoint (Chapter 6).

openai/vdvae publishes plain state_dicts: ``*-model-ema.th`` (the EMA weights, used for evaluation
and sampling) and, for most datasets, ``*-model.th`` (the raw weights, saved from inside
DistributedDataParallel, so every key starts with ``module.``). This command maps their keys onto
:class:`~hvae_lib.models.vdvae.VDVAE` (one tensor is reordered: the output convolution's channels,
from the official NHWC mixture layout to :class:`~hvae_lib.likelihoods.DiscretizedLogisticMixture`'s)
and writes ``DIR/checkpoint.pt`` with the preset's config and the official input normalisation, so

    python -m hvae_lib.evaluate DIR/checkpoint.pt --iw-samples 0
    python -m hvae_lib.sample DIR/checkpoint.pt --temperature 0.8

work on it, and ``python -m hvae_lib.train --preset P --out DIR`` fine-tunes it (a fresh optimiser at
step 0). The preset is found from the tensors' names and shapes when ``--preset`` is not given.
``benchmarks/vdvae_import_check.py`` checks the import against the official model code.
"""
from __future__ import annotations

import argparse
import dataclasses
import pickle
import re
import sys
from pathlib import Path

import torch

from . import checkpoint as ckpt_io
from .config import Config, ConfigError, get_preset, list_presets, override, to_dict
from .data import dataset_info

PAPER_PRESETS = ("vdvae_cifar10", "vdvae_imagenet32", "vdvae_imagenet64", "vdvae_ffhq256", "vdvae_ffhq1024")

# official key (after 'module.' is stripped) -> ours; bias_xs and the output conv are handled apart
_RENAMES = [
    (re.compile(r"^decoder\.dec_blocks\.(\d+)\.enc\."), r"dec_blocks.\1.posterior."),
    (re.compile(r"^decoder\.dec_blocks\.(\d+)\."), r"dec_blocks.\1."),
    (re.compile(r"^decoder\.(gain|bias)$"), r"\1"),
    (re.compile(r"^decoder\.out_net\.out_conv\."), r"out_conv."),
    (re.compile(r"^encoder\."), r"encoder."),
]


class OfficialWeightsError(ValueError):
    """Weights that are not an official VDVAE state_dict of the model asked for; the message says why."""


def mixture_channel_order(num_mix: int, channels: int = 3) -> torch.Tensor:
    """Index into the official output channels for each of ours: ``ours = official[order]``.

    Official (NHWC, ``vae_helpers.discretized_mix_logistic_loss``): M logits, then per colour channel c
    the block [M means, M log-scales, M coefficients], i.e. M + c*3M + k*M + m. Ours: M logits, then
    ``(k m c)``, i.e. M + k*M*C + m*C + c (k: 0 means, 1 log-scales, 2 coefficients).
    """
    order = list(range(num_mix))
    for k in range(3):
        for m in range(num_mix):
            for c in range(channels):
                order.append(num_mix + c * 3 * num_mix + k * num_mix + m)
    return torch.tensor(order)


def official_to_ours(state: dict, model) -> dict:
    """The official state_dict (with or without DDP's ``module.`` prefix) as ``model``'s state_dict.

    Raises :class:`OfficialWeightsError` naming the first missing, unexpected or misshapen tensor.
    """
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OfficialWeightsError("the file does not hold a state_dict (a dict of tensors) as openai/vdvae saves them")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    bias_resolutions = sorted(model.bias_xs.keys(), key=int)  # ascending, as the official ParameterList
    ours = {}
    for key, value in state.items():
        match = re.match(r"^decoder\.bias_xs\.(\d+)$", key)
        if match:
            j = int(match.group(1))
            if j >= len(bias_resolutions):
                raise OfficialWeightsError(f"it has a bias input {key!r} this model does not (it has {len(bias_resolutions)})")
            ours[f"bias_xs.{bias_resolutions[j]}"] = value
            continue
        for pattern, replacement in _RENAMES:
            if pattern.match(key):
                new = pattern.sub(replacement, key)
                break
        else:
            raise OfficialWeightsError(f"it has a tensor {key!r} that no VDVAE module holds")
        if new.startswith("out_conv.") and model.likelihood_kind != "bernoulli":
            value = value[mixture_channel_order(model.num_mixtures, model.image_shape[0])]
        ours[new] = value
    expected = model.state_dict()
    missing = [k for k in expected if k not in ours]
    unexpected = [k for k in ours if k not in expected]
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has {unexpected[0]!r}, which this model lacks"
        raise OfficialWeightsError(f"it {what} ({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    for k, v in expected.items():
        if ours[k].shape != v.shape:
            raise OfficialWeightsError(f"its {k!r} has shape {tuple(ours[k].shape)} where this model's has {tuple(v.shape)}")
    return ours


def _meta_model(config: Config):
    """The preset's model without memory (on the meta device): enough to compare names and shapes."""
    info = dataset_info(config.data.name, config.data.resolution)
    with torch.device("meta"):
        return config.model.build(tuple(info.image_shape), info.bits, info.likelihood)


def find_preset(state: dict) -> str:
    """The VDVAE paper preset whose model the official state_dict fits."""
    for name in PAPER_PRESETS:
        try:
            official_to_ours(state, _meta_model(get_preset(name)))
            return name
        except OfficialWeightsError:
            continue
    raise OfficialWeightsError(f"it fits none of the VDVAE paper presets ({', '.join(PAPER_PRESETS)}); pass --preset and "
                       f"--set model.* keys (width, enc_blocks, dec_blocks, ...) describing its architecture")


def load_official(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise OfficialWeightsError(f"there is no file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):
            raise OfficialWeightsError("it holds pickled Python objects besides tensors, which a weights-only load "
                                       "refuses (nothing in it was run)") from None
        raise OfficialWeightsError("it could not be read as a PyTorch file (UnpicklingError)") from None
    except Exception as err:  # junk bytes: RuntimeError, EOFError, ...
        raise OfficialWeightsError(f"it could not be read as a PyTorch file ({type(err).__name__})") from None


def import_checkpoint(ema_path, out_path, model_path=None, preset: str | None = None, overrides=()) -> dict:
    """Write an hvae_lib checkpoint at ``out_path`` from official files; return a summary."""
    from .engine import build_model, lr_factor, make_optimizer

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
    config = override(get_preset(preset), list(overrides))
    if config.model.family != "vdvae":
        raise ConfigError(f"--preset {preset} is a {config.model.family} preset; official VDVAE weights need a vdvae preset.")
    info = dataset_info(config.data.name, config.data.resolution)
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
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config.optim))
    state = {
        "format": ckpt_io.FORMAT, "library_version": ckpt_io.library_version(), "config": to_dict(config),
        "data_info": dataclasses.asdict(info), "step": 0, "total_skips": 0, "consecutive_skips": 0,
        "model": model.state_dict(), "ema": converted["EMA"] if config.optim.ema_rate > 0 else None,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(), "rng": [ckpt_io.rng_state()],
        "world_size": 1, "imported_from": {"ema": str(ema_path), "model": str(model_path) if model_path else None},
    }
    ckpt_io.save_atomic(state, out_path)
    return {"preset": preset, "parameters": sum(p.numel() for p in model.parameters()), "out": str(out_path),
            "raw_weights": "raw" in states}


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
          f"{'' if summary['raw_weights'] else ' (EMA weights only: they serve as the raw weights too)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
