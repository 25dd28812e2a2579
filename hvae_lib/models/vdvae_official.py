"""openai's released VDVAE weights mapped onto :class:`~hvae_lib.models.vdvae.VDVAE` (Chapter 6).

openai/vdvae publishes plain state_dicts: ``*-model-ema.th`` (the EMA weights, used for evaluation
and sampling) and, for most datasets, ``*-model.th`` (the raw weights, saved from inside
DistributedDataParallel, so every key starts with ``module.``). :func:`official_to_ours` renames
their keys onto our module tree and reorders one tensor, the output convolution's channels, from
the official NHWC mixture layout to
:class:`~hvae_lib.probability.likelihoods.DiscretizedLogisticMixture`'s; :func:`find_preset` says
which paper preset a state_dict fits, from its tensors' names and shapes. ``python -m
hvae_lib.import_vdvae`` turns the files into a checkpoint; ``benchmarks/vdvae_import_check.py``
checks the mapping against the official model code.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from hvae_lib.config import Config
from hvae_lib.data.contract import dataset_info
from hvae_lib.models.presets import get_preset

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
    info = dataset_info(config.data.name, config.data.resolution, config.data.bits)
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
