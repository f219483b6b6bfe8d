"""Fold inference-time norm layers into the convolution before them.

With frozen statistics (``FrozenBN``, and ``FrozenStatsBN`` or plain BatchNorm in eval mode) a
norm layer computes ``y = x * s + t`` per channel, with ``s = gamma / sqrt(var + eps)`` and
``t = beta - mean * s``. Folded into the convolution before it, ``conv'(x) = conv(x) * s + t``
needs one layer instead of two. The pairs folded are those whose forward runs the convolution
straight into the norm layer:

- timm ResNet blocks (``BasicBlock``, ``Bottleneck``): ``convK`` -> ``bnK``;
- the trunk's stem (:class:`rsb_backbone.TimmResNet` or timm's ``ResNet``): ``conv1`` -> ``bn1``
  (the last convolution of a deep stem when ``conv1`` is a ``Sequential``);
- ``nn.Sequential`` children: a convolution followed by a norm layer (timm's ``downsample``,
  deep stems);
- Detectron2's ``Conv2d`` with a ``norm`` (FPN or heads built with a norm).

A BatchNorm layer in training mode uses batch statistics and is never folded (an error), so fold
a model after ``model.eval()``.
"""

import logging
from typing import Iterator, Optional, Tuple

import torch
from torch import nn

from detectron2.layers import Conv2d as Detectron2Conv2d
from detectron2.layers import FrozenBatchNorm2d

logger = logging.getLogger(__name__)

__all__ = ["fold_norms", "is_foldable_norm", "fold_norm_into_conv"]

_FOLDABLE = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)


def is_foldable_norm(module: Optional[nn.Module]) -> bool:
    """True for ``FrozenBatchNorm2d``, ``BatchNorm2d`` and ``SyncBatchNorm`` (eval mode is
    checked when folding)."""
    return isinstance(module, _FOLDABLE)


def _affine_of(norm: nn.Module, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` of a norm layer with frozen statistics."""
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        if norm.training:
            raise ValueError(
                f"{name} ({type(norm).__name__}) is in training mode and uses batch statistics; "
                f"call model.eval() before folding norm layers"
            )
        if norm.running_mean is None or norm.running_var is None:
            raise ValueError(f"{name} ({type(norm).__name__}) has no running statistics to fold")
    weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
    bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
    scale = weight * torch.rsqrt(norm.running_var + norm.eps)
    return scale, bias - norm.running_mean * scale


@torch.no_grad()
def fold_norm_into_conv(conv: nn.Conv2d, norm: nn.Module, name: str = "norm") -> None:
    """Fold ``norm`` into ``conv`` in place: afterwards ``conv(x)`` equals ``norm(conv(x))``.

    Args:
        conv: a 2-D convolution; it gains a bias when it had none.
        norm: ``FrozenBatchNorm2d`` or an eval-mode ``BatchNorm2d`` over ``conv``'s output channels.
        name: the norm layer's name in the model, for errors.
    """
    scale, shift = _affine_of(norm, name)
    if scale.numel() != conv.out_channels:
        raise ValueError(
            f"{name} has {scale.numel()} channels but the convolution before it has {conv.out_channels}"
        )
    dtype = conv.weight.dtype
    weight = conv.weight.double() * scale.double().reshape(-1, 1, 1, 1)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift, dtype=torch.float64)
    bias = bias * scale.double() + shift.double()
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype), requires_grad=False)


def _last_conv(module: nn.Module) -> Optional[nn.Conv2d]:
    if isinstance(module, nn.Conv2d):
        return module
    if isinstance(module, nn.Sequential) and len(module) and isinstance(module[-1], nn.Conv2d):
        return module[-1]
    return None


def _pairs(model: nn.Module) -> Iterator[Tuple[str, nn.Module, str, nn.Conv2d]]:
    """(module name, parent module, norm attribute, convolution) of every foldable pair."""
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    from ..timm_resnet import TimmResNet

    for prefix, module in model.named_modules():
        if isinstance(module, (BasicBlock, Bottleneck)):
            for index in (1, 2, 3):
                conv, norm = getattr(module, f"conv{index}", None), getattr(module, f"bn{index}", None)
                if isinstance(conv, nn.Conv2d) and is_foldable_norm(norm):
                    yield prefix, module, f"bn{index}", conv
        elif isinstance(module, (TimmResNet, ResNet)):
            conv = _last_conv(getattr(module, "conv1", None))
            if conv is not None and is_foldable_norm(getattr(module, "bn1", None)):
                yield prefix, module, "bn1", conv
        elif isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (_, conv), (norm_name, norm) in zip(children, children[1:]):
                if isinstance(conv, nn.Conv2d) and is_foldable_norm(norm):
                    yield prefix, module, norm_name, conv
        elif isinstance(module, Detectron2Conv2d) and is_foldable_norm(getattr(module, "norm", None)):
            yield prefix, module, "norm", module


def fold_norms(model: nn.Module) -> int:
    """Fold every norm layer that directly follows a convolution into it, in place.

    The folded norm layers are replaced by ``nn.Identity`` (Detectron2 ``Conv2d``: ``norm=None``),
    so the state dict no longer has their tensors: fold after loading a checkpoint.

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
