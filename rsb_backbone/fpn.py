"""Feature pyramids on a :class:`TimmResNet`, shared by the LazyConfigs and the yacs builders."""

from typing import Sequence

import torch.nn.functional as F
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
import fvcore.nn.weight_init as weight_init

__all__ = ["RetinaNetP6P7", "rcnn_fpn", "retinanet_fpn"]


class RetinaNetP6P7(nn.Module):
    """P6 and P7 for RetinaNet: P6 = conv3x3/2 on C5, P7 = conv3x3/2 on P6.

    mmdetection's RetinaNet (``add_extra_convs="on_input"``, ``relu_before_extra_convs=False``)
    feeds P6 to the P7 conv directly; Detectron2's ``LastLevelP6P7`` applies a ReLU first.
    Parameter names (``p6``, ``p7``) are Detectron2's, so checkpoints of either load.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, in_feature: str = "res5", relu_before_p7: bool = False
    ):
        """
        Args:
            in_channels: channels of ``in_feature`` (2048 for C5 of a ResNet-50).
            out_channels: FPN width.
            in_feature: the bottom-up feature P6 is computed from.
            relu_before_p7: True for Detectron2's behaviour, False (default) for mmdetection's.
        """
        super().__init__()
        self.num_levels = 2
        self.in_feature = in_feature
        self.relu_before_p7 = relu_before_p7
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            weight_init.c2_xavier_fill(module)

    def forward(self, c5):
        p6 = self.p6(c5)
        p7 = self.p7(F.relu(p6) if self.relu_before_p7 else p6)
        return [p6, p7]


def _check_in_features(bottom_up: Backbone, in_features: Sequence[str]) -> list:
    available = list(bottom_up.output_shape().keys())
    missing = [f for f in in_features if f not in available]
    if missing:
        raise ValueError(
            f"FPN in_features={list(in_features)!r} but the bottom-up network returns {available}"
        )
    return list(in_features)


def _mmdet_init_(fpn: FPN) -> FPN:
    """Re-initialise every FPN convolution (top block included) Xavier-uniform, as mmdetection."""
    from .modeling.mmdet_init import xavier_uniform_fill_

    for name, module in fpn.named_modules():
        if isinstance(module, nn.Conv2d) and not name.startswith("bottom_up."):
            xavier_uniform_fill_(module)
    return fpn


def rcnn_fpn(
    bottom_up: Backbone,
    *,
    in_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
    out_channels: int = 256,
    norm: str = "",
    fuse_type: str = "sum",
    mmdet_init: bool = False,
) -> FPN:
    """FPN with P2-P6 as used by the R-CNNs: P6 is a stride-2 max-pool of P5.

    Args:
        bottom_up: the trunk, usually a :class:`TimmResNet`.
        in_features: trunk outputs the pyramid is built from.
        out_channels: FPN width.
        norm: norm of the FPN convs ("" for none, as in mmdetection and Detectron2).
        fuse_type: "sum" or "avg" for the top-down merge.
        mmdet_init: True initialises the FPN convolutions as mmdetection does (Xavier-uniform);
            False as Detectron2 does (``c2_xavier_fill``).
    """
    fpn = FPN(
        bottom_up=bottom_up,
        in_features=_check_in_features(bottom_up, in_features),
        out_channels=out_channels,
        norm=norm,
        top_block=LastLevelMaxPool(),
        fuse_type=fuse_type,
    )
    return _mmdet_init_(fpn) if mmdet_init else fpn


def retinanet_fpn(
    bottom_up: Backbone,
    *,
    in_features: Sequence[str] = ("res3", "res4", "res5"),
    out_channels: int = 256,
    norm: str = "",
    fuse_type: str = "sum",
    relu_before_p7: bool = False,
    mmdet_init: bool = False,
) -> FPN:
    """FPN with P3-P7 as used by RetinaNet: P6 from C5, P7 from P6.

    Args:
        bottom_up: the trunk, usually a :class:`TimmResNet`.
        in_features: trunk outputs the pyramid is built from; the last one also feeds P6.
        out_channels: FPN width.
        norm: norm of the FPN convs ("" for none).
        fuse_type: "sum" or "avg" for the top-down merge.
        relu_before_p7: False (default) follows mmdetection; True follows Detectron2.
        mmdet_init: True initialises the FPN convolutions, P6 and P7 included, as mmdetection
            does (Xavier-uniform); False as Detectron2 does (``c2_xavier_fill``).
    """
    in_features = _check_in_features(bottom_up, in_features)
    last = in_features[-1]
    top_block = RetinaNetP6P7(
        bottom_up.output_shape()[last].channels,
        out_channels,
        in_feature=last,
        relu_before_p7=relu_before_p7,
    )
    fpn = FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=norm,
        top_block=top_block,
        fuse_type=fuse_type,
    )
    return _mmdet_init_(fpn) if mmdet_init else fpn
