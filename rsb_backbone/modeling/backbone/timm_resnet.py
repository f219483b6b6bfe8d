"""timm's ResNet family (RSB weights included) as a Detectron2 :class:`Backbone`, and how its
BatchNorm layers behave during detection training (:data:`NORM_MODES`)."""

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from omegaconf import DictConfig, ListConfig

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import Backbone
from detectron2.utils.registry import locate

from .timm_weights import load_backbone_weights

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


# Detectron2 stage names and the timm modules that produce them.
STAGE_NAMES = ("res2", "res3", "res4", "res5")
_TIMM_STAGES = ("layer1", "layer2", "layer3", "layer4")
_STEM_MODULES = ("conv1", "bn1", "act1", "maxpool")


def _create_timm_resnet(model_name: str) -> nn.Module:
    import timm
    from timm.models.resnet import ResNet

    try:
        model = timm.create_model(model_name, pretrained=False)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise ValueError(f"model_name={model_name!r} is not a timm model ({e})") from e
    if not isinstance(model, ResNet):
        raise ValueError(
            f"model_name={model_name!r} builds a timm {type(model).__name__}; expected a model of "
            f"timm's ResNet family (resnet50, resnet101, resnet50d, resnext50_32x4d, ...)"
        )
    return model


def stage_channels(model_name: str, stage: str = "res5") -> int:
    """Channels of one output of ``TimmResNet(model_name=...)``, read without building weights, so
    that configs derive a width from an overridable ``model_name`` (RetinaNet's P6 conv).

    Args:
        model_name: a timm ResNet-family architecture.
        stage: one of ``res2``..``res5``.
    """
    if stage not in STAGE_NAMES:
        raise ValueError(f"stage={stage!r}: expected one of {list(STAGE_NAMES)}")
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = _create_timm_resnet(model_name)
    timm_name = _TIMM_STAGES[STAGE_NAMES.index(stage)]
    return next(info["num_chs"] for info in model.feature_info if info["module"] == timm_name)


class TimmResNet(Backbone):
    """A timm ResNet-family trunk with Detectron2's outputs ``res2``..``res5`` and timm's parameter
    names, onto which timm, torchvision and mmpretrain ResNet weights map (docs/backbone.md)."""

    def __init__(
        self,
        *,
        model_name: str = "resnet50",
        weights: Optional[str] = None,
        out_features: Sequence[str] = STAGE_NAMES,
        freeze_at: int = 0,
        norm: str = "FrozenBN",
    ):
        """
        Args:
            model_name: a timm ResNet-family architecture without pretrained tag, e.g. ``"resnet50"``.
            weights: None for timm's random init; a timm pretrained name (``"resnet50.a1_in1k"``),
                a weight file or its ``https://`` address, read tensors-only (``timm_weights``).
            out_features: which of ``res2``..``res5`` to return; later stages are dropped.
            freeze_at: Detectron2's meaning: 0 trains everything, 1 freezes the stem, 2 the stem
                and ``res2``, ... 5 everything (``requires_grad=False``, ``FrozenBatchNorm2d``).
            norm: how the other BatchNorm layers train, one of :data:`~rsb_backbone.NORM_MODES`.
        """
        super().__init__()
        out_features = list(out_features)
        if not out_features or not set(out_features) <= set(STAGE_NAMES):
            raise ValueError(
                f"out_features={out_features!r}: expected a non-empty subset of {list(STAGE_NAMES)}"
            )
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at={freeze_at}: expected 0 (nothing) to 5 (all stages)")
        if norm not in NORM_MODES:
            raise ValueError(f"norm={norm!r} is not supported; expected one of {', '.join(NORM_MODES)}")
        self._norm = norm

        model = _create_timm_resnet(model_name)
        if weights:
            load_backbone_weights(model, str(weights))

        num_stages = max(STAGE_NAMES.index(f) for f in out_features) + 1
        self._stages = list(zip(STAGE_NAMES[:num_stages], _TIMM_STAGES[:num_stages]))
        for name in _STEM_MODULES + _TIMM_STAGES[:num_stages]:
            self.add_module(name, getattr(model, name))
        # Backbone.output_shape() reads these three.
        self._out_features = out_features
        info = {i["module"]: i for i in model.feature_info}
        self._out_feature_channels = {name: info[timm_name]["num_chs"] for name, timm_name in self._stages}
        self._out_feature_strides = {name: info[timm_name]["reduction"] for name, timm_name in self._stages}
        if norm == "FrozenBN":
            FrozenBatchNorm2d.convert_frozen_batchnorm(self)  # converts the children in place
        elif norm == "SyncBN":
            nn.SyncBatchNorm.convert_sync_batchnorm(self)
        groups = [_STEM_MODULES] + [(timm_name,) for _, timm_name in self._stages]
        for name in (name for group in groups[:freeze_at] for name in group):
            module = getattr(self, name).requires_grad_(False)
            setattr(self, name, FrozenBatchNorm2d.convert_frozen_batchnorm(module))
        if norm == FROZEN_STATS_BN:
            set_batchnorm_eval(self)

    def train(self, mode: bool = True) -> "TimmResNet":
        super().train(mode)
        if self._norm == FROZEN_STATS_BN:
            set_batchnorm_eval(self)
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Feature maps of ``out_features`` for normalized images ``x`` of shape (N, 3, H, W)."""
        if x.dim() != 4:
            raise ValueError(f"TimmResNet takes (N, C, H, W) inputs, got shape {tuple(x.shape)}")
        for name in _STEM_MODULES:
            x = getattr(self, name)(x)
        outputs = {}
        for name, timm_name in self._stages:
            x = getattr(self, timm_name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


def skip_pretrained_weights(node) -> int:
    """Set ``weights=None`` on every :class:`TimmResNet` in a LazyConfig tree; return how many.

    Used wherever a whole-detector checkpoint will replace them (evaluation, predictors,
    conversion, benchmarks): loading them first would only cost time, or fail offline.

    Args:
        node: a LazyConfig (sub)tree, e.g. ``cfg.model``; changed in place.
    """
    if isinstance(node, ListConfig):
        return sum(skip_pretrained_weights(item) for item in node)
    if not isinstance(node, DictConfig):
        return 0
    target, changed = node.get("_target_", None), 0
    if (locate(target) if isinstance(target, str) else target) is TimmResNet and node.get("weights", None):
        node.weights = None
        changed = 1
    return changed + sum(skip_pretrained_weights(node.get(key)) for key in node.keys())
