"""RetinaNet's P6/P7 top block for Detectron2's ``FPN``, as mmdetection builds it."""

import torch.nn.functional as F
from torch import nn

import fvcore.nn.weight_init as weight_init


class RetinaNetP6P7(nn.Module):
    """P6 and P7 for RetinaNet: P6 = conv3x3/2 on C5, P7 = conv3x3/2 on P6, without the ReLU that
    Detectron2's ``LastLevelP6P7`` puts before P7 (docs/mmdet_rsb_settings.md); same parameter names."""

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
        super().__init__()
        self.num_levels = 2
        self.in_feature = in_feature
        self.relu_before_p7 = relu_before_p7
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        weight_init.c2_xavier_fill(self.p6)
        weight_init.c2_xavier_fill(self.p7)

    def forward(self, c5):
        p6 = self.p6(c5)
        p7 = self.p7(F.relu(p6) if self.relu_before_p7 else p6)
        return [p6, p7]
