"""The FPN pieces of the RSB detectors: RetinaNet's P6/P7 top block for Detectron2's ``FPN``, as
mmdetection builds it, and the yacs support: the ``MODEL.RSB`` config keys and the
``BACKBONE_REGISTRY`` builders reading them (usage: docs/backbone.md)."""

import torch.nn.functional as F

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7

from .timm_resnet import FROZEN_STATS_BN, STAGE_NAMES, TimmResNet


class RetinaNetP6P7(LastLevelP6P7):
    """Detectron2's ``LastLevelP6P7`` (same parameters and initialisation) without the ReLU it puts
    before P7, as mmdetection builds P6/P7 (docs/mmdet_rsb_settings.md)."""

    def __init__(
        self, in_channels: int, out_channels: int, *, in_feature: str = "res5", relu_before_p7: bool = False
    ):
        """
        Args:
            in_channels: channels of ``in_feature`` (configs: :func:`rsb_backbone.stage_channels`).
            out_channels: FPN width.
            in_feature: the bottom-up feature P6 is computed from.
            relu_before_p7: True for Detectron2's behaviour, False (default) for mmdetection's.
        """
        super().__init__(in_channels, out_channels, in_feature)
        self.relu_before_p7 = relu_before_p7

    def forward(self, c5):
        p6 = self.p6(c5)
        return [p6, self.p7(F.relu(p6) if self.relu_before_p7 else p6)]


def add_rsb_config(cfg: CfgNode) -> CfgNode:
    """Add the ``MODEL.RSB`` keys to a Detectron2 config (in place; also returned).

    Keys:
        MODEL.RSB.MODEL_NAME: timm architecture, default "resnet50".
        MODEL.RSB.WEIGHTS: backbone weights: "" for random init, a timm pretrained name or a file.
        MODEL.RSB.NORM: "FrozenStatsBN" (default, mmdetection's RSB mode), "FrozenBN", "BN", "SyncBN".
        MODEL.RSB.OUT_FEATURES: trunk outputs, default res2..res5.
        MODEL.RSB.RELU_BEFORE_P7: RetinaNet's P7 input; False is mmdetection's behaviour.

    ``MODEL.BACKBONE.FREEZE_AT`` and ``MODEL.FPN.*`` keep their Detectron2 meaning.
    """
    cfg.MODEL.RSB = CfgNode(
        dict(
            MODEL_NAME="resnet50",
            WEIGHTS="",
            NORM=FROZEN_STATS_BN,
            OUT_FEATURES=list(STAGE_NAMES),
            RELU_BEFORE_P7=False,
        )
    )
    return cfg


def _trunk_from_cfg(cfg: CfgNode, input_shape: ShapeSpec, out_features) -> TimmResNet:
    if input_shape.channels != 3:
        raise ValueError(f"input_shape.channels={input_shape.channels}: the timm ResNet takes 3 channels")
    rsb = cfg.MODEL.RSB
    return TimmResNet(
        model_name=rsb.MODEL_NAME,
        weights=rsb.WEIGHTS or None,
        out_features=out_features,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        norm=rsb.NORM,
    )


@BACKBONE_REGISTRY.register()
def build_rsb_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> TimmResNet:
    """The trunk alone, with ``MODEL.RSB.OUT_FEATURES`` as outputs."""
    return _trunk_from_cfg(cfg, input_shape, cfg.MODEL.RSB.OUT_FEATURES)


def _fpn_from_cfg(cfg: CfgNode, input_shape: ShapeSpec, top_block) -> FPN:
    """Detectron2's FPN on the trunk, reading ``MODEL.FPN.*``; ``top_block(trunk)`` makes its top block."""
    trunk = _trunk_from_cfg(cfg, input_shape, cfg.MODEL.FPN.IN_FEATURES)
    fpn = cfg.MODEL.FPN
    return FPN(
        bottom_up=trunk,
        in_features=fpn.IN_FEATURES,
        out_channels=fpn.OUT_CHANNELS,
        norm=fpn.NORM,
        top_block=top_block(trunk),
        fuse_type=fpn.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_rsb_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """P2-P6 FPN for the R-CNNs (P6 = max-pool of P5), reading ``MODEL.FPN.*``."""
    return _fpn_from_cfg(cfg, input_shape, lambda trunk: LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_rsb_resnet_retinanet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """P3-P7 FPN for RetinaNet (:class:`RetinaNetP6P7` on the last input feature), reading
    ``MODEL.FPN.*`` and ``MODEL.RSB.RELU_BEFORE_P7``."""
    last = cfg.MODEL.FPN.IN_FEATURES[-1]
    return _fpn_from_cfg(
        cfg,
        input_shape,
        lambda trunk: RetinaNetP6P7(
            trunk.output_shape()[last].channels,
            cfg.MODEL.FPN.OUT_CHANNELS,
            in_feature=last,
            relu_before_p7=cfg.MODEL.RSB.RELU_BEFORE_P7,
        ),
    )
