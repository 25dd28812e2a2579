"""Building blocks of NVAE (Chapters 3-4): residual cells, normalisation, spectral regularisation."""
from .cells import (EncoderCell, FactorizedReduce, GenerativeCell, SqueezeExcite, Swish, UpsampleSkip,
                    generative_cell, postprocess_cells, preprocess_cells, use_generative_cell)
from .norms import BN_MOMENTUM, BatchNorm2d, WNConv2d, batchnorm_layers, bn_regularizer, frozen_running_stats
from .spectral import SpectralRegularizer, conv_weight
from .sync_bn import local_batch_norm, sync_world_size

__all__ = [
    "BN_MOMENTUM", "BatchNorm2d", "EncoderCell", "FactorizedReduce", "GenerativeCell", "SpectralRegularizer",
    "SqueezeExcite", "Swish", "UpsampleSkip", "WNConv2d", "batchnorm_layers", "bn_regularizer", "conv_weight",
    "frozen_running_stats", "generative_cell", "local_batch_norm", "postprocess_cells", "preprocess_cells",
    "sync_world_size", "use_generative_cell",
]
