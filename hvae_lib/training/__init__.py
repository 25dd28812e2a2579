"""The training machinery: one loop from a laptop CPU to multi-GPU torchrun (every chapter).

- :mod:`~hvae_lib.training.engine`: :class:`~hvae_lib.training.engine.Trainer`, the step (autocast,
  clipping, VDVAE's gradient skipping, EMA), evaluation, sample grids, the loop;
- :mod:`~hvae_lib.training.optim`: the optimiser, the learning-rate schedule, the skip rule and EMA;
- :mod:`~hvae_lib.training.checkpoint`: checkpoints that load safely, exact resumes, and the model a
  checkpoint holds;
- :mod:`~hvae_lib.training.run_log`: the global batches, ``metrics.jsonl``, TensorBoard and progress;
- :mod:`~hvae_lib.training.stopping`: SIGINT, SIGTERM and SIGUSR1 without losing work;
- :mod:`~hvae_lib.training.safe_write`: atomic writes, and one sentence for a full or read-only disk;
- :mod:`~hvae_lib.training.background`: runs trained in a second process (the other core) while a
  notebook goes on (Chapters 6b and 7).

Models come in only through :func:`hvae_lib.models.build_model` and the base contract of
:mod:`hvae_lib.models.base`; an import-linter contract in ``pyproject.toml`` forbids importing a
model family here.
"""
