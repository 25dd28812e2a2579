"""The probability of the course: distributions, likelihoods, the objective and what controls the KL.

- :mod:`~hvae_lib.probability.gaussian`: diagonal Gaussians with bounded log-sigma, analytic KL and
  temperature (Chapter 1);
- :mod:`~hvae_lib.probability.likelihoods`: Bernoulli and the bit-depth-aware discretised logistic
  mixture (Chapter 1);
- :mod:`~hvae_lib.probability.objectives`: what a model returns (``ModelOutput``), the ELBO in nats
  and bits/dim, the importance-weighted bound (Chapter 1);
- :mod:`~hvae_lib.probability.kl_control`: KL warm-up, free bits, NVAE's KL balancing (Chapters 2, 4);
- :mod:`~hvae_lib.probability.residual_normal`: NVAE's residual normal posterior and its KL (Chapter 4);
- :mod:`~hvae_lib.probability.flows`: inverse autoregressive flow cells on the posterior (Chapter 4).

Models are built from these; nothing here knows a model. The flows' masked convolutions reuse the
spectral regulariser's bookkeeping from :mod:`hvae_lib.layers`.
"""
