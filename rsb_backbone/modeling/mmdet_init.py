"""mmdetection v2's initialisation of the layers a detector adds on top of the pretrained trunk.

Where the two libraries initialise new layers differently (everything else, the RPN, RetinaNet
head, box predictor and mask convolutions, starts from the same distributions):

* FPN convolutions: Xavier-uniform, bias 0 in mmdetection (``FPN`` ``init_cfg``);
  ``c2_xavier_fill`` (Kaiming-uniform, a=1) in Detectron2.
* box head FC layers: Xavier-uniform, bias 0 (``ConvFCBBoxHead`` ``init_cfg``); ``c2_xavier_fill``.
* mask logits convolution: Kaiming-normal fan_out, bias 0 (``FCNMaskHead.init_weights``);
  normal(0, 0.001).

:class:`MMDetFPN`, :class:`MMDetBoxHead` and :class:`MMDetMaskHead` are Detectron2's modules with
mmdetection's initialisation and identical parameters, so checkpoints load into either.
"""

from torch import nn

from detectron2.config import configurable
from detectron2.modeling.backbone.fpn import FPN
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, MaskRCNNConvUpsampleHead

__all__ = ["MMDetBoxHead", "MMDetFPN", "MMDetMaskHead", "xavier_uniform_fill_"]


def xavier_uniform_fill_(module: nn.Module) -> None:
    """Xavier-uniform weights (gain 1) and zero bias, mmcv's ``xavier_init(distribution="uniform")``.

    Args:
        module: a convolution or linear layer.
    """
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
                xavier_uniform_fill_(module)


class MMDetBoxHead(FastRCNNConvFCHead):
    """:class:`FastRCNNConvFCHead` (same arguments) whose FC layers start Xavier-uniform."""

    @configurable
    def __init__(self, input_shape, **kwargs):
        super().__init__(input_shape, **kwargs)
        for fc in self.fcs:
            xavier_uniform_fill_(fc)


class MMDetMaskHead(MaskRCNNConvUpsampleHead):
    """:class:`MaskRCNNConvUpsampleHead` (same arguments) whose mask logits start Kaiming-normal."""

    @configurable
    def __init__(self, input_shape, **kwargs):
        super().__init__(input_shape, **kwargs)
        nn.init.kaiming_normal_(self.predictor.weight, mode="fan_out", nonlinearity="relu")
        nn.init.constant_(self.predictor.bias, 0)
