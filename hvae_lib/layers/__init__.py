"""Network building blocks, from NVAE (Chapters 3-5).

- :mod:`~hvae_lib.layers.cells`: NVAE's residual cells: the encoder cell, the depthwise generative
  cell, squeeze-and-excitation, Swish, the factorised reduce and the up-sampling skip;
- :mod:`~hvae_lib.layers.norms`: BatchNorm with momentum 0.05 and its regulariser, weight-normalised
  convolutions, frozen running statistics for recomputation (Chapters 3 and 5);
- :mod:`~hvae_lib.layers.spectral`: spectral regularisation by persistent power iteration (Chapter 4);
- :mod:`~hvae_lib.layers.sync_bn`: BatchNorm over the global batch under torchrun;
- :mod:`~hvae_lib.layers.bn_readjust`: sampling with BatchNorm statistics re-estimated at the
  sampling temperature, cached (Chapter 4).

This package imports nothing else of the library.
"""
