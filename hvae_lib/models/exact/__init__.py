"""Small models whose likelihood is known exactly, for what depth buys (Chapters 1 and 7).

- :mod:`~hvae_lib.models.exact.linear_gaussian`: a linear-Gaussian latent variable model with
  log p(x) in closed form, the anchor of the importance-weighted bound (Chapter 1);
- :mod:`~hvae_lib.models.exact.binary_ar`: an autoregressive model (MADE) over D binary pixels,
  enumerable for small D (Chapter 7);
- :mod:`~hvae_lib.models.exact.d_layer_vae`: Proposition 1's D-layer VAE with its exact ELBO and
  log p(x) by enumeration (Chapter 7);
- :mod:`~hvae_lib.models.exact.gaussian_hierarchy`: 2-D Gaussian hierarchies and their marginals on
  a grid, Proposition 2's mechanism made visible (Chapter 7);
- :mod:`~hvae_lib.models.exact.sampling_cost`: network passes and wall time of a sample as the data
  dimension grows (Chapter 7).
"""
