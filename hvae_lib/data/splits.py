"""openai/vdvae's held-out splits (Chapter 6), reproduced with NumPy alone.

The Very Deep VAE's released models were chosen and evaluated on these splits, so evaluating them
(or comparing with the paper) on another split mixes their training images into the "test" set.
``data.vdvae_split=true`` turns them on (:func:`hvae_lib.data.load_dataset`):

- CIFAR-10: the official ``data.py`` calls scikit-learn's ``train_test_split(trX, trY,
  test_size=5000, random_state=11172018)`` on the 50,000 training images. That function draws one
  permutation from ``numpy.random.RandomState(11172018)`` (its ``ShuffleSplit``), holds out the
  first 5,000 indices and trains on the other 45,000, in that order; :func:`cifar10_vdvae_split`
  draws the same permutation without scikit-learn (``tests/test_data_protocols.py`` pins indices
  that scikit-learn itself returns). The test set is the official one, used once at the end.
- FFHQ-256: ``np.random.seed(5)`` and a permutation of the 70,000 images of ``ffhq-256.npy``;
  the last 7,000 are held out and serve as both validation and test ("we did not significantly
  tune hyperparameters on ffhq-256, and so simply evaluate on the test set").

NumPy's legacy ``RandomState`` stream is frozen by NumPy's compatibility policy, so these indices
do not change with the NumPy version.
"""
from __future__ import annotations

import numpy as np

CIFAR10_SEED, CIFAR10_VALID = 11172018, 5_000
FFHQ256_SEED, FFHQ256_HELD_OUT = 5, 7_000


def cifar10_vdvae_split(n: int = 50_000) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) of openai/vdvae's CIFAR-10 split: 45,000 and 5,000."""
    permutation = np.random.RandomState(CIFAR10_SEED).permutation(n)
    return permutation[CIFAR10_VALID:], permutation[:CIFAR10_VALID]


def ffhq256_vdvae_split(n: int = 70_000) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) of openai/vdvae's FFHQ-256 split: 63,000 and 7,000."""
    permutation = np.random.RandomState(FFHQ256_SEED).permutation(n)
    return permutation[:-FFHQ256_HELD_OUT], permutation[-FFHQ256_HELD_OUT:]
