"""Where a training step's memory goes and how to spend less of it (Chapter 5; ``--dry-run``).

- :mod:`~hvae_lib.memory.saved_tensors`: the saved-tensor counter (what autograd keeps for the
  backward pass, by module), and the bytes of parameters, gradients and optimiser state;
- :mod:`~hvae_lib.memory.recompute`: gradient checkpointing that updates BatchNorm once, and NVAE's
  fused BN-Swish that recomputes BatchNorm in the backward pass;
- :mod:`~hvae_lib.memory.plan`: batch size, precision and checkpointing for a GPU, fitted to measured
  peaks.
"""
