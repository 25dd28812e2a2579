"""NVlabs' released NVAE checkpoints mapped onto :class:`~hvae_lib.models.nvae.NVAE` (Chapters 3-4).

NVlabs/NVAE's ``train.py`` saves ``checkpoint.pt`` as ``{'epoch', 'state_dict', 'optimizer',
'global_step', 'args', 'arch_instance', 'scheduler', 'grad_scalar'}``, where ``args`` is the
pickled ``argparse.Namespace`` of the training command. :func:`load_released` reads it with a
weights-only unpickler that allows exactly one class besides tensors and containers,
``argparse.Namespace``; anything else in the file is refused before any of it runs.

:func:`official_key_map` names, for every tensor of our model, the tensor of NVlabs'
``AutoEncoder`` that holds the same weights (its ``enc_tower`` interleaves encoder cells,
encoder combiners and down cells; its ``dec_tower`` generative cells, decoder combiners and up
cells; samplers, flows and combiners sit in flat lists, top group first; a convolution without
weight normalisation also lists its weight as ``weight_normalized``, which is skipped); the released
files were trained with synchronised BatchNorm, whose wrapper adds ``.bn`` to the inverted residuals'
BatchNorm names (both spellings are read). One tensor is reordered: the output convolution's
channels, from NVlabs' mixture layout (per colour, M means, M log-scales, M coefficients) to
:class:`~hvae_lib.probability.likelihoods.DiscretizedLogisticMixture`'s. Our spectral
regulariser's power-iteration vectors have no counterpart (NVlabs keeps them outside the
state_dict) and start afresh.

:func:`config_from_args` turns the namespace into our model keys, and :func:`find_preset` says
which paper preset the tensors fit. An imported model is evaluated as NVlabs' code evaluates it
(``official_numerics``: the top prior N(0, 1.01^2) and the 8-bit pixel 254 scored as the upper
tail; see :class:`~hvae_lib.models.nvae.NVAE`). ``benchmarks/nvae_import_check.py`` checks all of
this against NVlabs' model code.
"""
from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path

import torch

from hvae_lib.config import Config
from hvae_lib.data.contract import dataset_info
from hvae_lib.models.presets import get_preset
from hvae_lib.models.vdvae_official import mixture_channel_order

PAPER_PRESETS = ("nvae_mnist", "nvae_cifar10", "nvae_celeba64", "nvae_imagenet32", "nvae_celebahq256", "nvae_ffhq256")
# NVlabs' --dataset -> (our dataset, the paper preset trained on it)
DATASETS = {"mnist": ("mnist", "nvae_mnist"), "cifar10": ("cifar10", "nvae_cifar10"),
            "celeba_64": ("celeba_64", "nvae_celeba64"), "imagenet_32": ("imagenet32", "nvae_imagenet32"),
            "celeba_256": ("celebahq_256", "nvae_celebahq256"), "ffhq": ("ffhq_256", "nvae_ffhq256")}
# our NVAEConfig key -> NVlabs' train.py flag (and its default there for files saved before the flag existed)
ARGS = {"num_latent_scales": ("num_latent_scales", None), "num_groups_per_scale": ("num_groups_per_scale", None),
        "ada_groups": ("ada_groups", False), "min_groups_per_scale": ("min_groups_per_scale", 1),
        "num_latent_per_group": ("num_latent_per_group", None), "num_channels_enc": ("num_channels_enc", None),
        "num_channels_dec": ("num_channels_dec", None), "num_cell_per_cond_enc": ("num_cell_per_cond_enc", None),
        "num_cell_per_cond_dec": ("num_cell_per_cond_dec", None), "num_preprocess_blocks": ("num_preprocess_blocks", None),
        "num_preprocess_cells": ("num_preprocess_cells", None), "num_postprocess_blocks": ("num_postprocess_blocks", None),
        "num_postprocess_cells": ("num_postprocess_cells", None), "num_mix": ("num_mixture_dec", 10),
        "num_flows": ("num_nf", None), "use_se": ("use_se", None), "residual_normal": ("res_dist", None),
        "weight_decay_norm": ("weight_decay_norm", None), "weight_decay_norm_init": ("weight_decay_norm_init", 10.0)}
BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class OfficialCheckpointError(ValueError):
    """A file that is not one of NVlabs' NVAE checkpoints of a model we can build; the message says why."""


# ----------------------------------------------------------------------------- reading the file
def load_released(path) -> dict:
    """NVlabs' ``checkpoint.pt`` as a dict, read weights-only with ``argparse.Namespace`` allowed."""
    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"there is no file at {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise OfficialCheckpointError(f"it holds a pickled {found.group(1)}, which an NVlabs checkpoint does not "
                                          f"(only argparse.Namespace is allowed besides tensors), so nothing in it "
                                          f"was run") from None
        raise OfficialCheckpointError("it could not be read as a PyTorch file (UnpicklingError)") from None
    except Exception as err:  # junk bytes: RuntimeError, EOFError, ...
        raise OfficialCheckpointError(f"it could not be read as a PyTorch file ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) \
            or not isinstance(ckpt.get("args"), argparse.Namespace):
        raise OfficialCheckpointError("it is a PyTorch file but not an NVlabs NVAE checkpoint (no 'state_dict' with "
                                      "an 'args' namespace, as NVlabs' train.py saves)")
    return ckpt


def config_keys_from_args(args: argparse.Namespace) -> tuple[str, dict]:
    """(our dataset name, our NVAEConfig keys) from the training command's namespace."""
    dataset = getattr(args, "dataset", None)
    if dataset not in DATASETS:
        raise OfficialCheckpointError(f"it was trained on --dataset {dataset!r}, which this library has no loader for "
                                      f"(it imports {', '.join(DATASETS)})")
    if getattr(args, "arch_instance", "res_mbconv") != "res_mbconv":
        raise OfficialCheckpointError(f"its cells are --arch_instance {args.arch_instance!r}; this library builds "
                                      f"NVAE's res_mbconv cells (the released models' and the paper's)")
    if args.num_latent_scales == 1 and args.num_groups_per_scale == 1:
        raise OfficialCheckpointError("it is NVlabs' one-group 'vanilla VAE' variant, which this library's NVAE "
                                      "does not build")
    if getattr(args, "num_mixture_dec", 10) == 1 and dataset != "mnist":
        raise OfficialCheckpointError("it has a Gaussian decoder (--num_mixture_dec 1); this library's NVAE has the "
                                      "logistic mixture")
    keys = {}
    for ours, (flag, default) in ARGS.items():
        value = getattr(args, flag, default)
        if value is None:
            raise OfficialCheckpointError(f"its args lack --{flag}")
        keys[ours] = value
    if getattr(args, "weight_decay_norm_anneal", False):
        total = getattr(args, "num_total_iter", 0)
        keys["weight_decay_norm_anneal_steps"] = max(1, int(getattr(args, "kl_anneal_portion", 0.3) * total))
    return DATASETS[dataset][0], keys


# ----------------------------------------------------------------------------- the key map
def _encoder_cell(ours: str, official: str) -> dict[str, str]:
    """Module prefixes of an encoder cell (BN-Swish-Conv twice, SE; factorised-reduce skip)."""
    pairs = {f"{ours}.branch.{k}.0": f"{official}._ops.{k}.bn_act" for k in (0, 1)}
    pairs |= {f"{ours}.branch.{k}.2": f"{official}._ops.{k}.conv_0" for k in (0, 1)}
    pairs |= {f"{ours}.branch.2.net.{k}": f"{official}.se.se.{k}" for k in (0, 2)}
    pairs |= {f"{ours}.skip.convs.{k}": f"{official}.skip.conv_{k + 1}" for k in range(4)}
    return pairs


def _generative_cell(ours: str, official: str, upsample: bool) -> dict[str, str]:
    """Module prefixes of a generative cell: NVlabs' InvertedResidual is BN, ConvBNSwish (conv, BN+Swish)
    twice, Conv, BN inside ``_ops.0.conv``, SE beside it; ours is one flat ``branch``."""
    u, conv = int(upsample), f"{official}._ops.0.conv"
    pairs = {f"{ours}.branch.{u}": f"{conv}.{u}.bn", f"{ours}.branch.{u + 1}": f"{conv}.{u + 1}.conv.0",
             f"{ours}.branch.{u + 2}": f"{conv}.{u + 1}.conv.1", f"{ours}.branch.{u + 4}": f"{conv}.{u + 2}.conv.0",
             f"{ours}.branch.{u + 5}": f"{conv}.{u + 2}.conv.1", f"{ours}.branch.{u + 7}": f"{conv}.{u + 3}",
             f"{ours}.branch.{u + 8}": f"{conv}.{u + 4}.bn"}
    pairs |= {f"{ours}.branch.{u + 9}.net.{k}": f"{official}.se.se.{k}" for k in (0, 2)}
    if upsample:
        pairs[f"{ours}.skip.conv"] = f"{official}.skip.1"
    return pairs


def module_map(model) -> dict[str, str]:
    """Our module prefix -> NVlabs' module prefix, for every module holding tensors."""
    pairs = {"stem": "stem", "enc_top.1": "enc0.1", "head.conv.1": "image_conditional.1"}
    for i, cell in enumerate(model.preprocess):
        pairs |= _encoder_cell(f"preprocess.{i}", f"pre_process.{i}")
    n_groups, k, combiners = model.num_groups, 0, 0
    for s, scale in enumerate(model.enc_scales):
        for g, cells in enumerate(scale):
            for c in range(len(cells)):
                pairs |= _encoder_cell(f"enc_scales.{s}.{g}.{c}", f"enc_tower.{k}")
                k += 1
            if not (s == len(model.enc_scales) - 1 and g == len(scale) - 1):  # the top group has no combiner
                pairs[f"groups.{n_groups - 1 - combiners}.enc_combiner"] = f"enc_tower.{k}.conv"
                combiners, k = combiners + 1, k + 1
        if s < len(model.enc_down):
            pairs |= _encoder_cell(f"enc_down.{s}", f"enc_tower.{k}")
            k += 1
    k = 0
    for j, group in enumerate(model.groups):
        pairs[f"groups.{j}.posterior"] = f"enc_sampler.{j}"
        if group.prior is not None:
            pairs[f"groups.{j}.prior.1"] = f"dec_sampler.{j - 1}.1"
        for n in range(len(group.flows)):
            flow = f"nf_cells.{j * len(group.flows) + n}"
            for ours, theirs in (("cell", "cell1"), ("mirror_cell", "cell2")):
                pairs |= {f"groups.{j}.flows.{n}.{ours}.expand": f"{flow}.{theirs}.conv.convz.0",
                          f"groups.{j}.flows.{n}.{ours}.depthwise": f"{flow}.{theirs}.conv.convz.2",
                          f"groups.{j}.flows.{n}.{ours}.head": f"{flow}.{theirs}.mu.conv_0"}
        for c in range(len(group.cells)):
            pairs |= _generative_cell(f"groups.{j}.cells.{c}", f"dec_tower.{k}", False)
            k += 1
        pairs[f"groups.{j}.dec_combiner"] = f"dec_tower.{k}.conv"
        k += 1
        if group.up is not None:
            pairs |= _generative_cell(f"groups.{j}.up", f"dec_tower.{k}", True)
            k += 1
    for i, cell in enumerate(model.postprocess):
        pairs |= _generative_cell(f"postprocess.{i}", f"post_process.{i}", not isinstance(cell.skip, torch.nn.Identity))
    return pairs


def official_key_map(model) -> dict[str, str]:
    """Our state_dict key -> NVlabs' key (the released, synchronised-BatchNorm spelling), for every
    tensor but the spectral regulariser's vectors."""
    modules = module_map(model)
    keys = {"prior_ftr0": "prior_ftr0"}
    for key in model.state_dict():
        if key.startswith("spectral.") or key == "prior_ftr0":
            continue
        prefix, name = key.rsplit(".", 1)
        if prefix not in modules:
            raise KeyError(f"no NVlabs counterpart for our tensor {key!r}")
        keys[key] = f"{modules[prefix]}.{name}"
    return keys


def _output_order(model) -> torch.Tensor | None:
    head = model.head
    if head.kind == "bernoulli":
        return None
    return mixture_channel_order(head.conv[1].out_channels // (1 + 3 * head.image_channels), head.image_channels)


def official_to_ours(state: dict, model) -> dict:
    """NVlabs' state_dict as ``model``'s (its spectral vectors kept); a missing, unexpected or misshapen
    tensor raises :class:`OfficialCheckpointError` naming the first one."""
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OfficialCheckpointError("its 'state_dict' is not a dict of tensors")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    # A convolution without weight normalisation assigns its weight Parameter to ``weight_normalized``,
    # which registers it a second time under that name (NVlabs' evaluate.py loads non-strictly for it).
    state = {k: v for k, v in state.items() if not k.endswith(".weight_normalized")}
    keys = official_key_map(model)
    wanted = set(keys.values())
    for key in list(state):  # plain BatchNorm2d spelling (single-GPU training): no '.bn'
        match = re.fullmatch(r"(.*_ops\.0\.conv\.\d+)\.(\w+)", key)
        if key not in wanted and match and match.group(2) in BN_TENSORS and f"{match.group(1)}.bn.{match.group(2)}" in wanted:
            state[f"{match.group(1)}.bn.{match.group(2)}"] = state.pop(key)
    missing = [theirs for theirs in keys.values() if theirs not in state]
    unexpected = [k for k in state if k not in wanted]
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has {unexpected[0]!r}, which this model lacks"
        raise OfficialCheckpointError(f"it {what} ({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    expected, ours, order = model.state_dict(), {}, _output_order(model)
    for key, theirs in keys.items():
        value = state[theirs]
        if key.startswith("head.conv.1.") and order is not None:
            value = value[order]
        if value.shape != expected[key].shape:
            raise OfficialCheckpointError(f"its {theirs!r} has shape {tuple(value.shape)} where this model's "
                                          f"{key!r} has {tuple(expected[key].shape)}")
        ours[key] = value
    return ours | {k: v for k, v in expected.items() if k.startswith("spectral.")}


def ours_to_official(model) -> dict:
    """``model``'s weights in NVlabs' layout (what its ``state_dict()`` would hold), e.g. to write a file
    in the released format from a model of ours."""
    state, order, modules = model.state_dict(), _output_order(model), dict(model.named_modules())
    out = {}
    for key, theirs in official_key_map(model).items():
        value = state[key].contiguous()
        if key.startswith("head.conv.1.") and order is not None:
            value = value[torch.argsort(order)]
        out[theirs] = value.clone()
        prefix, name = key.rsplit(".", 1) if "." in key else ("", key)
        module = modules.get(prefix)
        if name == "weight" and isinstance(module, torch.nn.Conv2d) and not hasattr(module, "log_weight_norm"):
            out[f"{theirs[:-len('weight')]}weight_normalized"] = out[theirs]  # as NVlabs' plain convs register it
    return out


def _count(state: dict, pattern: str) -> int:
    return len({m.group(1) for k in state if (m := re.fullmatch(pattern, k))})


def tensor_signature(state: dict) -> tuple | None:
    """What NVlabs' tensors say about the architecture, read off a handful of names and shapes: the
    stem, h_0, the first sampler and the output conv's shapes, and the numbers of groups, flow cells,
    pre-/post-processing cells and encoder/decoder tower entries (None when they are not there)."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    try:
        shapes = tuple(tuple(state[k].shape) for k in ("stem.weight", "prior_ftr0", "enc_sampler.0.weight",
                                                        "image_conditional.1.weight"))
    except (KeyError, AttributeError):
        return None
    counts = tuple(_count(state, p) for p in (r"enc_sampler\.(\d+)\.weight", r"nf_cells\.(\d+)\.cell1\.mu\.conv_0\.weight",
                                              r"pre_process\.(\d+)\..*", r"post_process\.(\d+)\..*",
                                              r"enc_tower\.(\d+)\..*", r"dec_tower\.(\d+)\..*"))
    return shapes + counts


def config_signature(config: Config) -> tuple:
    """:func:`tensor_signature` of the model ``config`` describes, computed without building it."""
    from hvae_lib.models.nvae_parts import groups_per_scale

    m, info = config.model, dataset_info(config.data.name, config.data.resolution, config.data.bits)
    c, h, _ = info.image_shape
    depth = 2 ** (m.num_preprocess_blocks + m.num_latent_scales - 1)
    side = -(-h // depth)
    groups = sum(groups_per_scale(m.num_latent_scales, m.num_groups_per_scale, m.ada_groups, m.min_groups_per_scale))
    out = c if info.likelihood == "bernoulli" else m.num_mix * (1 + 3 * c)
    shapes = ((m.num_channels_enc, c, 3, 3), (m.num_channels_dec * depth, side, side),
              (2 * m.num_latent_per_group, m.num_channels_enc * depth, 3, 3), (out, m.num_channels_dec, 3, 3))
    enc = groups * m.num_cell_per_cond_enc + groups - 1 + m.num_latent_scales - 1
    dec = (groups - 1) * m.num_cell_per_cond_dec + groups + m.num_latent_scales - 1
    return shapes + (groups, groups * m.num_flows, m.num_preprocess_blocks * m.num_preprocess_cells,
                     m.num_postprocess_blocks * m.num_postprocess_cells, enc, dec)


def find_preset(state: dict) -> str | None:
    """The NVAE paper preset whose model NVlabs' state_dict fits, read from its tensors' names and
    shapes (:func:`tensor_signature`; the import then maps every tensor), or None."""
    signature = tensor_signature(state)
    for name in PAPER_PRESETS:
        if signature is not None and config_signature(get_preset(name)) == signature:
            return name
    return None
