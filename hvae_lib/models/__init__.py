"""The models of the course and the registry the training engine builds them through.

- :mod:`~hvae_lib.models.vae`: the convolutional VAE (Chapter 1);
- :mod:`~hvae_lib.models.lvae`: the Ladder VAE (Chapter 2);
- :mod:`~hvae_lib.models.nvae` and its parts: NVAE (Chapters 3-5);
- :mod:`~hvae_lib.models.vdvae`, its parts and architecture strings, and the import of openai's
  released weights (:mod:`~hvae_lib.models.vdvae_official`): the Very Deep VAE (Chapters 6, 6b, 7);
- :mod:`~hvae_lib.models.presets`: named configurations, from seconds-long CPU runs to paper sizes;
- :mod:`~hvae_lib.models.exact`: Chapter 7's small models whose likelihood is known exactly.

Every family registers its config class (:func:`hvae_lib.config.model_family`) when imported, and
importing this package imports every family, so :func:`build_model` and
:func:`hvae_lib.config.from_dict` know them all. The training machinery builds models only through
:func:`build_model` (an import-linter contract in ``pyproject.toml`` says so).
"""
from __future__ import annotations

from hvae_lib.config import Config
from hvae_lib.config.ranges import ConfigError
from hvae_lib.data.contract import DatasetInfo
from hvae_lib.models import lvae, nvae, vae, vdvae  # noqa: F401  (each registers its config family)


def build_model(config: Config, info: DatasetInfo):
    """A freshly initialised model for ``config`` on data described by ``info``."""
    try:
        return config.model.build(tuple(info.image_shape), info.bits, info.likelihood)
    except ValueError as err:  # a model's one-sentence complaint about its hyperparameters
        raise ConfigError(str(err)) from None
