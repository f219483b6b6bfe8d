"""timm's ResNet family (RSB weights included) as a Detectron2 :class:`Backbone`."""

from typing import Dict, Optional, Sequence

import torch
from torch import nn

from omegaconf import DictConfig, ListConfig

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import Backbone
from detectron2.utils.registry import locate

from .norm_modes import FROZEN_STATS_BN, check_norm_mode, convert_norm, set_batchnorm_eval
from .timm_weights import load_backbone_weights

__all__ = ["TimmResNet", "STAGE_NAMES", "skip_pretrained_weights", "stage_channels"]

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
    """Channels of one output of ``TimmResNet(model_name=...)``, read without building weights.

    A config computes a layer's input width from the trunk's ``model_name`` with it (RetinaNet's
    P6 conv), so that a trunk override such as ``resnet18`` changes that width too.

    Args:
        model_name: a timm ResNet-family architecture.
        stage: one of ``res2``..``res5``.
    """
    if stage not in STAGE_NAMES:
        raise ValueError(f"stage={stage!r}: expected one of {list(STAGE_NAMES)}")
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = _create_timm_resnet(model_name)
    channels = {info["module"]: info["num_chs"] for info in model.feature_info}
    return channels[_TIMM_STAGES[STAGE_NAMES.index(stage)]]


class TimmResNet(Backbone):
    """A timm ResNet-family trunk with Detectron2's outputs ``res2``..``res5``.

    Parameter names are timm's (``conv1.weight``, ``layer1.0.conv1.weight``, ...), so timm,
    torchvision and mmpretrain/mmdetection ResNet weights map onto it by name.
    """

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
            model_name: a timm ResNet-family architecture, e.g. ``"resnet50"``. A pretrained tag
                is not part of it: pass ``weights="resnet50.a1_in1k"`` instead.
            weights: None for random init (timm's init, last BN of each block zeroed); a timm
                pretrained name such as ``"resnet50.a1_in1k"`` (downloaded from the Hugging Face
                hub or read from its local cache); a local ``.safetensors``/``.pth`` file in timm,
                torchvision or mmpretrain layout; or an ``https://`` address of such a file.
                Loading never unpickles arbitrary objects.
            out_features: which of ``res2``..``res5`` to return. Stages after the last requested
                one are dropped from the model.
            freeze_at: Detectron2's meaning: 0 trains everything, 1 freezes the stem, 2 the stem
                and ``res2``, ... 5 everything. Frozen parameters get ``requires_grad=False`` and
                their BatchNorm layers become ``FrozenBatchNorm2d``.
            norm: how the other BatchNorm layers train: ``"FrozenBN"``, ``"BN"``, ``"SyncBN"``, or
                ``"FrozenStatsBN"`` (mmdetection's RSB setting: BatchNorm kept in eval mode so the
                running statistics never change, gamma/beta trainable).
        """
        super().__init__()
        out_features = list(out_features)
        unknown = [f for f in out_features if f not in STAGE_NAMES]
        if not out_features or unknown:
            raise ValueError(
                f"out_features={out_features!r}: expected a non-empty subset of {list(STAGE_NAMES)}"
            )
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at={freeze_at}: expected 0 (nothing) to 5 (all stages)")
        self._norm = check_norm_mode(norm)
        self._freeze_at = freeze_at
        self.model_name = model_name

        model = _create_timm_resnet(model_name)
        if weights:
            load_backbone_weights(model, str(weights))

        feature_info = {info["module"]: info for info in model.feature_info}
        num_stages = max(STAGE_NAMES.index(f) for f in out_features) + 1
        for name in _STEM_MODULES:
            self.add_module(name, getattr(model, name))
        self._stages = list(zip(STAGE_NAMES[:num_stages], _TIMM_STAGES[:num_stages]))
        for _, timm_name in self._stages:
            self.add_module(timm_name, getattr(model, timm_name))

        self._out_features = out_features
        self._out_feature_channels = {
            name: feature_info[timm_name]["num_chs"] for name, timm_name in self._stages
        }
        self._out_feature_strides = {
            name: feature_info[timm_name]["reduction"] for name, timm_name in self._stages
        }
        convert_norm(self, norm)
        self.freeze(freeze_at)
        if norm == FROZEN_STATS_BN:
            set_batchnorm_eval(self)

    def freeze(self, freeze_at: int = 0) -> "TimmResNet":
        """Freeze the stem (``freeze_at >= 1``) and the first ``freeze_at - 1`` stages.

        Args:
            freeze_at: as in the constructor.

        Returns:
            self.
        """
        frozen_groups = [_STEM_MODULES] + [(timm_name,) for _, timm_name in self._stages]
        for group in frozen_groups[:freeze_at]:
            for name in group:
                module = getattr(self, name)
                for p in module.parameters():
                    p.requires_grad = False
                setattr(self, name, FrozenBatchNorm2d.convert_frozen_batchnorm(module))
        return self

    def train(self, mode: bool = True) -> "TimmResNet":
        super().train(mode)
        if self._norm == FROZEN_STATS_BN:
            set_batchnorm_eval(self)
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: images, shape (N, 3, H, W), normalized.

        Returns:
            dict mapping each of ``out_features`` to its feature map.
        """
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

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


def skip_pretrained_weights(node) -> int:
    """Set ``weights=None`` on every :class:`TimmResNet` in a LazyConfig tree; return how many.

    The one place that skips the ImageNet weights when a whole-detector checkpoint will replace
    them (evaluation, predictors, conversion, benchmarks): loading them first would only cost
    time, and a download that fails offline.

    Args:
        node: a LazyConfig (sub)tree, e.g. ``cfg.model``; changed in place.
    """
    changed = 0
    if isinstance(node, DictConfig):
        target = node.get("_target_", None)
        if isinstance(target, str):
            target = locate(target)
        if target is TimmResNet and node.get("weights", None):
            node.weights = None
            changed += 1
        for key in node.keys():
            changed += skip_pretrained_weights(node.get(key))
    elif isinstance(node, ListConfig):
        for item in node:
            changed += skip_pretrained_weights(item)
    return changed
