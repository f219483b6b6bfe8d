"""Folding inference-time norm layers into the convolution before them (the deployment form;
which pairs, and when: docs/deployment.md, "The deployment form of the PyTorch model")."""

import logging
from typing import Iterator, Tuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from detectron2.layers import Conv2d as Detectron2Conv2d
from detectron2.layers import FrozenBatchNorm2d

logger = logging.getLogger(__name__)

__all__ = ["fold_norms", "fold_norm_into_conv", "to_deployment_form"]

_FOLDABLE = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)


@torch.no_grad()
def fold_norm_into_conv(conv: nn.Conv2d, norm: nn.Module, name: str = "norm") -> None:
    """Fold ``norm`` into ``conv`` in place: afterwards ``conv(x)`` equals ``norm(conv(x))``.

    Args:
        conv: a 2-D convolution; it gains a bias when it had none.
        norm: ``FrozenBatchNorm2d`` or an eval-mode ``BatchNorm2d`` over ``conv``'s output channels.
        name: the norm layer's name in the model, for errors.

    Raises:
        ValueError: ``norm`` is in training mode, has no running statistics, or does not match
            ``conv``'s output channels.
    """
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        if norm.training:
            raise ValueError(
                f"{name} ({type(norm).__name__}) is in training mode and uses batch statistics; "
                f"call model.eval() before folding norm layers"
            )
        if norm.running_mean is None or norm.running_var is None:
            raise ValueError(f"{name} ({type(norm).__name__}) has no running statistics to fold")
    channels = norm.running_mean.numel()
    if channels != conv.out_channels:
        raise ValueError(f"{name} has {channels} channels; the convolution before it has {conv.out_channels}")
    conv.weight, conv.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    )


def _pairs(model: nn.Module) -> Iterator[Tuple[str, nn.Module, str, nn.Conv2d]]:
    """(module name, parent, norm attribute, conv) of every conv -> norm pair: timm's ``convK``/``bnK``
    (blocks; the stem, a deep stem's last conv), ``nn.Sequential`` neighbours, Detectron2 ``Conv2d.norm``."""
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    from .backbone.timm_resnet import TimmResNet

    for prefix, module in model.named_modules():
        if isinstance(module, (BasicBlock, Bottleneck, TimmResNet, ResNet)):
            for index in (1, 2, 3):
                conv, norm = getattr(module, f"conv{index}", None), getattr(module, f"bn{index}", None)
                if isinstance(conv, nn.Sequential) and len(conv):
                    conv = conv[-1]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, _FOLDABLE):
                    yield prefix, module, f"bn{index}", conv
        elif isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (_, conv), (norm_name, norm) in zip(children, children[1:]):
                if isinstance(conv, nn.Conv2d) and isinstance(norm, _FOLDABLE):
                    yield prefix, module, norm_name, conv
        elif isinstance(module, Detectron2Conv2d) and isinstance(module.norm, _FOLDABLE):
            yield prefix, module, "norm", module


def fold_norms(model: nn.Module) -> int:
    """Fold every norm layer that directly follows a convolution into it, in place.

    The folded norm layers become ``nn.Identity`` (Detectron2 ``Conv2d``: ``norm=None``), so the
    state dict loses their tensors: fold after loading a checkpoint.

    Args:
        model: a detector or backbone in eval mode.

    Returns:
        how many norm layers were folded.
    """
    pairs = list(_pairs(model))  # collect first: folding replaces modules
    for prefix, parent, norm_attr, conv in pairs:
        name = f"{prefix}.{norm_attr}" if prefix else norm_attr
        fold_norm_into_conv(conv, getattr(parent, norm_attr), name)
        setattr(parent, norm_attr, None if isinstance(parent, Detectron2Conv2d) else nn.Identity())
    logger.info("Folded %d norm layers into their convolutions", len(pairs))
    return len(pairs)


def to_deployment_form(model: nn.Module, *, channels_last: bool = False) -> nn.Module:
    """Put a loaded detector in eval mode and fold its norm layers (:func:`fold_norms`), in place.

    Args:
        model: a Detectron2 detector (or a backbone) with its weights loaded.
        channels_last: also store the 4-D weights channels-last (NHWC), which the convolutions'
            outputs then follow; often faster on CPU with oneDNN.

    Returns:
        ``model``, in eval mode.
    """
    folded = fold_norms(model.eval())
    if channels_last:
        model.to(memory_format=torch.channels_last)
    logger.info(
        "Deployment form: %d norm layers folded%s", folded, ", channels-last" if channels_last else ""
    )
    return model
