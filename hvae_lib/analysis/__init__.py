"""Looking at models: diagnostics, diagrams and pictures the chapters show.

- :mod:`~hvae_lib.analysis.diagnostics`: KL per group, the cumulative rate, active units, grids with
  the top groups fixed (Chapters 2, 4, 6b);
- :mod:`~hvae_lib.analysis.diagrams`: a residual cell and NVAE's encoder drawn from the modules
  (Chapter 3);
- :mod:`~hvae_lib.analysis.plotting`: image grids, KL bars, training curves, where a run stands
  (every chapter);
- :mod:`~hvae_lib.analysis.latents`: encode, decode, reconstruct, interpolate, and decode with the
  posterior down to each level (Chapter 7; ``python -m hvae_lib.latents``);
- :mod:`~hvae_lib.analysis.resolution_study`: what each resolution of a VDVAE decides (Chapter 7);
- :mod:`~hvae_lib.analysis.fid`: FID and KID of a model's samples through torch-fidelity
  (``python -m hvae_lib.fid``);
- :mod:`~hvae_lib.analysis.operator_norm`: a convolution's operator norm against its reshaped-kernel
  norm (Chapter 4).

These read models through their common interface (``model(x)``, ``sample``,
``sample_conditional``, the latent interface of :mod:`hvae_lib.models.base`) and never train one.
"""
