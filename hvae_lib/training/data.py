"""The data a run reads, and how its figures were obtained (the training engine, ``evaluate``).

:func:`load_data` turns a config's ``data.*`` keys into datasets (a bad key is one
:class:`~hvae_lib.config.ranges.ConfigError` sentence) and warns, in one line, when a paper preset
gets the other downsampled ImageNet; :func:`protocol` is what ``results.json`` and ``evaluate``'s
JSON say about the files, the split and the evaluation grid.
"""
from __future__ import annotations

import sys

from hvae_lib.config import Config
from hvae_lib.config.ranges import ConfigError
from hvae_lib.data import load_dataset


def load_data(config: Config, quiet: bool = False):
    """The train/test (and validation) datasets the config names (limits of 0 mean the whole split).

    When the config asks for the downsampled ImageNet a paper used (``data.imagenet_variant``) and
    the files on disk are the other one, one warning line goes to stderr (``quiet`` silences it)."""
    d = config.data
    try:
        data = load_dataset(d.name, d.root or None, train_limit=d.train_limit or None, test_limit=d.test_limit or None,
                            resolution=d.resolution, seed=config.run.seed, bits=d.bits, vdvae_split=d.vdvae_split)
    except ValueError as err:  # the loader's one-sentence complaint about data.* keys
        raise ConfigError(str(err)) from None
    found = data.notes.get("imagenet_variant")
    if found and d.imagenet_variant not in ("any", found) and not quiet:
        print(f"warning: this preset's paper used {IMAGENET_VARIANTS[d.imagenet_variant]} downsampled ImageNet, but "
              f"{d.name} was read from {IMAGENET_VARIANTS[found]}, so its bits/dim are not comparable with the paper's.",
              file=sys.stderr)
    return data


IMAGENET_VARIANTS = {"oord": "van den Oord et al.'s (.npy)", "chrabaszcz": "Chrabaszcz et al.'s (.npz)"}


def protocol(config: Config, data) -> dict:
    """How the figures of a run or an evaluation were obtained, for results.json and evaluate's JSON:
    the files and split the data came from (its ``notes``) and the model's evaluation grid when the
    model says (``describe_protocol``: openai's FFHQ-256 grid, NVlabs' scoring)."""
    out = dict(data.notes)
    model_protocol = getattr(config.model, "describe_protocol", None)
    if model_protocol is not None and (text := model_protocol()):
        out["grid"] = text
    return out
