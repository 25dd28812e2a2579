"""Named presets, from seconds-long CPU runs to the papers' sizes (every chapter; ``python -m
hvae_lib.train --list-presets`` prints them).

Each model family registers its presets in its own module here (with
:func:`hvae_lib.config.preset`): a tiny CPU preset for tests and smoke runs, the sizes the chapters
train, and the paper sizes with their official optimisers. Presets inherit: a child names its
parent and the keys it changes. Importing this package registers them all.
"""
from __future__ import annotations

from hvae_lib.config import PRESETS, Config, registered_preset
from hvae_lib.models.presets import lvae, nvae, vae, vdvae  # noqa: F401  (each registers its presets)


def get_preset(name: str) -> Config:
    """A fresh, validated copy of the preset ``name`` (an unknown name lists the presets)."""
    return registered_preset(name)


def list_presets() -> list[tuple[str, str]]:
    """(name, description) of every preset, sorted by name."""
    return [(name, desc) for name, (desc, _) in sorted(PRESETS.items())]
