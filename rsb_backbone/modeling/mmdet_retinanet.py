"""RetinaNet whose test-time box post-processing follows mmdetection v2.

mmdetection decodes each level's top candidates **clipped to the image** (``delta2bbox`` with
``max_shape=img_shape`` in ``BaseDenseHead._get_bboxes_single``) and runs the class-wise NMS on
the clipped boxes; Detectron2's ``RetinaNet.inference_single_image`` runs NMS on unclipped boxes
and clips afterwards (``detector_postprocess``). Boxes crossing the image border can therefore
suppress each other differently. Everything else (score threshold, 1000 candidates per level,
NMS 0.5, 100 detections) is equal and set by the config. The other RetinaNet difference, P7
without a ReLU, lives in the backbone (:class:`rsb_backbone.RetinaNetP6P7`).
"""

from typing import List, Tuple

from torch import Tensor

from detectron2.config import configurable
from detectron2.layers import batched_nms
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.structures import Boxes

__all__ = ["MMDetRetinaNet"]


@META_ARCH_REGISTRY.register()
class MMDetRetinaNet(RetinaNet):
    """:class:`RetinaNet` with mmdetection's clip-before-NMS at test time (module docstring)."""

    @configurable
    def __init__(self, *, clip_boxes_before_nms: bool = True, **kwargs):
        """
        Args:
            clip_boxes_before_nms: True (mmdetection) clips decoded boxes to the image before
                NMS; False is Detectron2's RetinaNet.
            kwargs: arguments of :class:`RetinaNet`.
        """
        super().__init__(**kwargs)
        self.clip_boxes_before_nms = clip_boxes_before_nms

    def inference_single_image(
        self,
        anchors: List[Boxes],
        box_cls: List[Tensor],
        box_delta: List[Tensor],
        image_size: Tuple[int, int],
    ):
        pred = self._decode_multi_level_predictions(
            anchors, box_cls, box_delta, self.test_score_thresh, self.test_topk_candidates, image_size
        )
        if self.clip_boxes_before_nms:
            pred.pred_boxes.clip(image_size)
        keep = batched_nms(pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh)
        return pred[keep[: self.max_detections_per_image]]
