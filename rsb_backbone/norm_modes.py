"""How the backbone's BatchNorm layers behave during detection training (:data:`NORM_MODES`)."""

from typing import Tuple

from torch import nn

from detectron2.layers import FrozenBatchNorm2d

__all__ = ["NORM_MODES", "FROZEN_STATS_BN", "convert_norm", "set_batchnorm_eval"]

FROZEN_STATS_BN = "FrozenStatsBN"

NORM_MODES: Tuple[str, ...] = (
    "FrozenBN",  # Detectron2's FrozenBatchNorm2d: statistics and affine frozen
    "BN",  # plain BatchNorm2d: batch statistics in training, everything updated
    "SyncBN",  # torch.nn.SyncBatchNorm: batch statistics across all workers (needs CUDA)
    # mmdetection's RSB setting (norm_eval=True, requires_grad=True): BatchNorm2d always in eval
    # mode, so the ImageNet running statistics never change; gamma/beta trainable
    FROZEN_STATS_BN,
)


def check_norm_mode(norm: str) -> str:
    """Return ``norm`` if it is a known mode, else raise ValueError naming the choices."""
    if norm not in NORM_MODES:
        raise ValueError(f"norm={norm!r} is not supported; expected one of {', '.join(NORM_MODES)}")
    return norm


def convert_norm(module: nn.Module, norm: str) -> nn.Module:
    """Convert the BatchNorm layers of ``module`` for ``norm`` (one of :data:`NORM_MODES`) in place;
    return it (a new object only when ``module`` itself is a BatchNorm layer)."""
    check_norm_mode(norm)
    if norm == "FrozenBN":
        return FrozenBatchNorm2d.convert_frozen_batchnorm(module)
    if norm == "SyncBN":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def set_batchnorm_eval(module: nn.Module) -> None:
    """Put every BatchNorm layer inside ``module`` in eval mode (running stats stay fixed)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
