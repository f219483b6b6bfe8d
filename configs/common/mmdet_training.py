# mmdetection v2's training-time behaviour, switched on by the four `_mmdet` configs.
# Each setting, its mmdetection source and its Detectron2 counterpart: docs/mmdet_parity.md,
# section "Training". The plain configs keep Detectron2's behaviour.
from detectron2.config import LazyCall as L

from rsb_backbone.data.image_size_filter import get_detection_dataset_dicts_min_size
from rsb_backbone.data.mmdet_mapper import MMDetDatasetMapper
from rsb_backbone.data.mmdet_resize import MMDetResize
from rsb_backbone.modeling import MMDetBoxHead, MMDetFPN, MMDetMaskHead, MMDetMatcher, MMDetRetinaNet, MMDetRPN

# The RSB-A1 ResNet-50 that mmdetection's resnet_strikes_back configs start from (OpenMMLab's own
# A1 reproduction, mmpretrain layout); timm's `resnet50.a1_in1k`, the plain configs' default, is
# a different training of the same recipe.
MMPRETRAIN_RSB_A1 = (
    "https://download.openmmlab.com/mmclassification/v0/resnet/"
    "resnet50_8xb256-rsb-a1-600e_in1k_20211228-20e21305.pth"
)


def use_mmdet_training(model, dataloader, *, roi_low_quality_matches: bool = False) -> None:
    """Switch a detector's LazyConfig to mmdetection's training behaviour.

    Args:
        model: the config's ``model``: an R-CNN (Faster, Mask, Cascade) or RetinaNet whose
            backbone is Detectron2's ``FPN`` on a ``TimmResNet``.
        dataloader: the config's ``dataloader``.
        roi_low_quality_matches: mmdetection's ``match_low_quality`` of the RoI assigner
            (True in Mask R-CNN, False in Faster and Cascade R-CNN).
    """
    model.backbone.bottom_up.weights = MMPRETRAIN_RSB_A1
    model.backbone._target_ = MMDetFPN  # FPN convs, top block included, Xavier-uniform
    # training images with a side under 32 px are dropped (mmdet CocoDataset min_size=32)
    dataloader.train.dataset._target_ = get_detection_dataset_dicts_min_size
    dataloader.train.dataset.min_size = 32
    dataloader.train.dataset.keep_crowd_only_images = True  # mmdet _filter_imgs counts crowd annotations
    # mmdetection's Resize (OpenCV bilinear, mmcv's rounding of the size) and annotations as its
    # CocoDataset/LoadAnnotations make them (slivers under 1 px left out, float64 box corners,
    # polygons rasterized at the original size); measured in docs/mmdet_parity.md, "Training: the data pipeline".
    train_resize = dataloader.train.mapper.augmentations[0]
    dataloader.train.mapper.augmentations[0] = L(MMDetResize)(
        short_edge_length=train_resize.short_edge_length, max_size=train_resize.max_size
    )
    dataloader.train.mapper._target_ = MMDetDatasetMapper
    dataloader.train.mapper.update(
        annotations_as_mmdet=True, rasterize_polygons_at_original_size=True, instance_mask_format="bitmask"
    )
    if "proposal_generator" not in model:
        _use_mmdet_retinanet_training(model)
        return
    # RPN: low-quality matches only at IoU >= 0.3, re-assigned; padding anchors ignored; losses
    # divided by the anchors actually sampled.
    rpn = model.proposal_generator
    rpn._target_ = MMDetRPN
    rpn.anchor_matcher = L(MMDetMatcher)(
        thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True, min_low_quality_iou=0.3
    )
    roi_heads = model.roi_heads
    # RoI heads: FC layers Xavier-uniform, mask logits Kaiming-normal; proposals matched before
    # the ground-truth boxes are appended (each assigned to itself), as mmdetection samples.
    if "box_heads" in roi_heads:  # cascade: one matcher per stage, no low-quality matches
        for head in roi_heads.box_heads:
            head._target_ = MMDetBoxHead
        roi_heads.proposal_matchers = [
            L(MMDetMatcher)(thresholds=list(m.thresholds), labels=[0, 1], appended_ground_truth=True)
            for m in roi_heads.proposal_matchers
        ]
    else:
        roi_heads.box_head._target_ = MMDetBoxHead
        roi_heads.proposal_matcher = L(MMDetMatcher)(
            thresholds=[0.5],
            labels=[0, 1],
            allow_low_quality_matches=roi_low_quality_matches,
            min_low_quality_iou=0.5,
            appended_ground_truth=True,
        )
    for head in roi_heads.get("mask_heads") or [roi_heads.get("mask_head")]:
        if head is not None:
            head._target_ = MMDetMaskHead


def _use_mmdet_retinanet_training(model) -> None:
    """RetinaNet: low-quality matches at any IoU, re-assigned; padding anchors ignored; losses
    divided by the batch's positive anchors (mmdet retinanet_r50_fpn.py, anchor_head.py)."""
    model._target_ = MMDetRetinaNet
    model.anchor_matcher = L(MMDetMatcher)(
        thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=True, min_low_quality_iou=0.0
    )
    model.ignore_padding_anchors = True
    model.normalize_by_batch_positives = True
