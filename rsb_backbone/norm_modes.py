"""How the backbone's BatchNorm layers behave during detection training (:data:`NORM_MODES`)."""

from typing import Tuple

from torch import nn

FROZEN_STATS_BN = "FrozenStatsBN"

NORM_MODES: Tuple[str, ...] = (
    "FrozenBN",  # Detectron2's FrozenBatchNorm2d: statistics and affine frozen
    "BN",  # plain BatchNorm2d: batch statistics in training, everything updated
    "SyncBN",  # torch.nn.SyncBatchNorm: batch statistics across all workers (needs CUDA)
    # mmdetection's RSB setting (norm_eval=True, requires_grad=True): BatchNorm2d always in eval
    # mode, so the ImageNet running statistics never change; gamma/beta trainable
    FROZEN_STATS_BN,
)


def set_batchnorm_eval(module: nn.Module) -> None:
    """Put every BatchNorm layer inside ``module`` in eval mode (running stats stay fixed)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
