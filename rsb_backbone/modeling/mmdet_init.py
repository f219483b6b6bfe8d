"""Detectron2's FPN, box head and mask head with mmdetection v2's initialisation of their new layers
(``docs/mmdet_parity.md``) and identical parameters, so checkpoints load into either.
"""

from torch import nn

from detectron2.config import configurable
from detectron2.modeling.backbone.fpn import FPN
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, MaskRCNNConvUpsampleHead


def _xavier_uniform_fill_(module: nn.Module) -> None:
    """Xavier-uniform weights (gain 1) and zero bias, mmcv's ``xavier_init(distribution="uniform")``."""
    nn.init.xavier_uniform_(module.weight)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


class MMDetFPN(FPN):
    """:class:`FPN` (same arguments) whose convolutions, the top block's included, start
    Xavier-uniform; the bottom-up trunk keeps its weights."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d) and name.split(".")[0] != "bottom_up":
                _xavier_uniform_fill_(module)


class MMDetBoxHead(FastRCNNConvFCHead):
    """:class:`FastRCNNConvFCHead` (same arguments) whose FC layers start Xavier-uniform."""

    @configurable
    def __init__(self, input_shape, **kwargs):
        super().__init__(input_shape, **kwargs)
        for fc in self.fcs:
            _xavier_uniform_fill_(fc)


class MMDetMaskHead(MaskRCNNConvUpsampleHead):
    """:class:`MaskRCNNConvUpsampleHead` (same arguments) whose mask logits start Kaiming-normal."""

    @configurable
    def __init__(self, input_shape, **kwargs):
        super().__init__(input_shape, **kwargs)
        nn.init.kaiming_normal_(self.predictor.weight, mode="fan_out", nonlinearity="relu")
        nn.init.constant_(self.predictor.bias, 0)
