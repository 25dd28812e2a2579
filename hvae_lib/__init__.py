"""hvae_lib: the tested library behind the course, laid out by concern.

Command lines: ``python -m hvae_lib.train``, ``.evaluate``, ``.sample``, ``.import_vdvae``, ``.latents`` and
``.fid``.
Subpackages, each importing only those below it (import-linter contracts in ``pyproject.toml``;
``docs/architecture.md`` draws the arrows):

- :mod:`hvae_lib.training`: the engine, optimiser, checkpoints, stopping, safe writes, logs;
- :mod:`hvae_lib.analysis`, :mod:`hvae_lib.memory`: looking at models; where memory goes;
- :mod:`hvae_lib.models`: VAE, Ladder VAE, NVAE, Very Deep VAE, presets, the exact small models;
- :mod:`hvae_lib.probability`: Gaussians, likelihoods, the ELBO, KL control, residual normal, flows;
- :mod:`hvae_lib.layers`: NVAE's cells, normalisation, spectral regularisation;
- :mod:`hvae_lib.config`: typed configs with declared ranges;
- :mod:`hvae_lib.data`: every dataset behind one contract.

:mod:`hvae_lib.exercises` holds the chapters' exercise checks.
"""
__version__ = "0.1.0"
