"""RetinaNet's P6/P7 top block for Detectron2's ``FPN``, as mmdetection builds it."""

import torch.nn.functional as F

from detectron2.modeling.backbone.fpn import LastLevelP6P7


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
