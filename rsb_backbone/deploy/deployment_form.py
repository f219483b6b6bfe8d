"""The deployment form of a detector: norm layers folded, optionally channels-last weights."""

import logging

import torch
from torch import nn

from .fold_norms import fold_norms

logger = logging.getLogger(__name__)

__all__ = ["to_deployment_form"]


def to_deployment_form(model: nn.Module, *, channels_last: bool = False) -> nn.Module:
    """Put a loaded detector in eval mode and fold its norm layers into its convolutions (in place).

    The detections stay those of the unfolded model up to float rounding. Call it after the
    checkpoint is loaded: the folded model no longer has the norm layers' tensors.

    Args:
        model: a Detectron2 detector (or a backbone) with its weights loaded.
        channels_last: also store the 4-D weights channels-last (NHWC), which the convolutions'
            outputs then follow; often faster on CPU with oneDNN.

    Returns:
        ``model``, in eval mode.
    """
    model.eval()
    folded = fold_norms(model)
    if channels_last:
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
    logger.info("Deployment form: %d norm layers folded%s", folded, ", channels-last" if channels_last else "")
    return model
