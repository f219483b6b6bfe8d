"""The `_mmdet` configs' data options, on hand-built cases whose values follow from mmdetection's
pipeline (mmcv rescale_size/imresize, CocoDataset._parse_ann_info and _filter_imgs,
LoadAnnotations._poly2mask): each case also shows Detectron2's own behaviour differing."""

import json
import os
import uuid

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util

from detectron2.config import LazyConfig
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import BitMasks, BoxMode
from detectron2.structures.masks import polygons_to_bitmask

from conftest import REPO_ROOT
from rsb_backbone.data.image_size_filter import get_detection_dataset_dicts_min_size
from rsb_backbone.data.mmdet_mapper import MMDetDatasetMapper, keeps_annotation_as_mmdet, polygons_to_rle
from rsb_backbone.data.mmdet_resize import MMDetResize, OpenCVResizeTransform, mmcv_rescaled_size

MMDET_CONFIGS = ["faster_rcnn", "mask_rcnn", "cascade_mask_rcnn", "retinanet"]


# ---- MMDetResize: mmcv's size rounding, OpenCV interpolation, float32 boxes -----------------------
def test_rescaled_size_rounds_as_mmcv_where_detectron2_rounds_down():
    # 86 x 15.5 = 1333 exactly, so the scale is 15.5 and the short side 33 x 15.5 = 511.5: mmcv
    # rounds half up to 512; Detectron2 reaches 511.4999... via 800 / 33 and rounds to 511.
    assert mmcv_rescaled_size(33, 86, 800, 1333) == (512, 1333)
    assert T.ResizeShortestEdge.get_output_shape(33, 86, 800, 1333) == (511, 1333)
    # uncapped: short side to 800, long side 640 x 800 / 480 = 1066.7 -> 1067 in both
    assert mmcv_rescaled_size(480, 640, 800, 1333) == (800, 1067)
    # capped portrait: 1000 x 1333 / 2000 = 666.5 -> 667
    assert mmcv_rescaled_size(2000, 1000, 800, 1333) == (1333, 667)


def test_mmdet_resize_gives_the_mmcv_size_and_refuses_several_scales():
    transform = MMDetResize(short_edge_length=(800,), max_size=1333).get_transform(np.zeros((33, 86, 3), np.uint8))
    assert isinstance(transform, OpenCVResizeTransform)
    assert (transform.new_h, transform.new_w) == (512, 1333)
    assert MMDetResize(short_edge_length=800, max_size=1333).short_edge_length == (800,)
    with pytest.raises(ValueError, match="one positive int"):
        MMDetResize(short_edge_length=(640, 800), max_size=1333)
    with pytest.raises(ValueError, match="at least short_edge_length 800"):
        MMDetResize(short_edge_length=800, max_size=600)


def test_opencv_resize_does_not_antialias_when_shrinking():
    # 4 -> 2 columns, OpenCV bilinear: destination x samples source x = (x + 0.5) * 2 - 0.5 = 0.5
    # and 2.5, the means of columns 0, 1 and 2, 3: [0, 100]. PIL (Detectron2) averages wider.
    image = np.repeat(np.array([0, 0, 100, 100], np.uint8)[None, :, None], 3, axis=2)
    assert OpenCVResizeTransform(1, 4, 1, 2).apply_image(image)[0, :, 0].tolist() == [0, 100]
    assert T.ResizeTransform(1, 4, 1, 2).apply_image(image)[0, :, 0].tolist() != [0, 100]
    # 2 -> 4 columns: source x = (x + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> 0, 25, 75, 100
    up = np.repeat(np.array([0, 100], np.uint8)[None, :, None], 3, axis=2)
    assert OpenCVResizeTransform(1, 2, 1, 4).apply_image(up)[0, :, 0].tolist() == [0, 25, 75, 100]


def test_opencv_resize_masks_nearest_and_boxes_in_float32():
    # OpenCV's nearest neighbour takes source column floor(x * 4 / 2): columns 0 and 2
    mask = np.array([[0, 1, 1, 0]], np.uint8)
    transform = OpenCVResizeTransform(1, 4, 1, 2)
    assert transform.apply_segmentation(mask).tolist() == [[0, 1]]
    assert transform.apply_segmentation(mask.astype(bool)).dtype == bool
    boxes = OpenCVResizeTransform(100, 200, 150, 300).apply_box(np.array([[10.0, 20.0, 30.0, 40.0]]))
    assert boxes.dtype == np.float32 and boxes.tolist() == [[15.0, 30.0, 45.0, 60.0]]
    with pytest.raises(ValueError, match="expects a 100x200 array, got 1x4"):
        OpenCVResizeTransform(100, 200, 150, 300).apply_image(np.zeros((1, 4, 3), np.uint8))


# ---- MMDetDatasetMapper: annotations as CocoDataset and LoadAnnotations make them ---------------
@pytest.mark.parametrize(
    "bbox, area, kept",
    [
        ((5, 5, 0.6, 40), 24.0, False),  # narrower than 1 px
        ((5, 5, 10, 10), 0.0, False),  # area not positive
        ((45, 5, 10, 10), 100.0, False),  # right of a 40 px wide image
        ((30, 20, 10, 10), 100.0, True),  # touching the right and bottom border
        ((35, -5, 10, 10), 100.0, True),  # partly outside
    ],
)
def test_annotations_mmdetection_leaves_out(bbox, area, kept):
    assert keeps_annotation_as_mmdet({"bbox": list(bbox), "area": area}, height=30, width=40) is kept


def _record(tmp_path, annotations, size=(20, 24)):
    height, width = size
    file_name = str(tmp_path / f"{uuid.uuid4().hex[:6]}.png")
    cv2.imwrite(file_name, np.full((height, width, 3), 100, np.uint8))
    return {"file_name": file_name, "height": height, "width": width, "image_id": 1, "annotations": annotations}


def _annotation(bbox, segmentation, area=None):
    return {"bbox": list(bbox), "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0,
            "area": area if area is not None else bbox[2] * bbox[3], "segmentation": segmentation}  # fmt: skip


def test_mapper_boxes_become_corners_in_float64_and_slivers_are_left_out(tmp_path):
    # 10.01 + 20.7 = 30.71 in float64 is float32 30.71; adding the float32 values gives 30.710001
    annotations = [_annotation((10.01, 2.0, 20.7, 10.0), [[10, 2, 30, 2, 30, 12]]),
                   _annotation((3.0, 3.0, 0.6, 10.0), [[3, 3, 3.6, 3, 3.6, 13]])]  # fmt: skip
    record = _record(tmp_path, annotations, size=(20, 40))
    mmdet = MMDetDatasetMapper(is_train=True, augmentations=[], image_format="RGB", use_instance_mask=False)
    boxes = mmdet(dict(record))["instances"].gt_boxes.tensor.numpy()
    assert boxes.tolist() == [[np.float32(10.01), 2.0, np.float32(30.71), 12.0]]
    d2 = DatasetMapper(is_train=True, augmentations=[], image_format="RGB", use_instance_mask=False)
    d2_boxes = d2(dict(record))["instances"].gt_boxes.tensor.numpy()
    assert len(d2_boxes) == 2 and d2_boxes[0, 2] == np.float32(30.710001) != boxes[0, 2]


def test_mapper_rasterizes_polygons_at_the_original_size(tmp_path):
    # A thin triangle on a 20 x 24 image, enlarged 2.5 times: mmdetection rasterizes it at 20 x 24
    # and enlarges the bitmap (nearest neighbour); Detectron2 rasterizes the enlarged polygon.
    triangle = [[1.0, 1.0, 22.0, 4.0, 3.0, 18.0]]
    record = _record(tmp_path, [_annotation((1, 1, 21, 17), triangle, area=150.0)])
    kwargs = dict(is_train=True, augmentations=[MMDetResize(short_edge_length=50, max_size=1333)], image_format="RGB",
                  use_instance_mask=True, instance_mask_format="bitmask")  # fmt: skip
    masks = MMDetDatasetMapper(**kwargs)(dict(record))["instances"].gt_masks
    assert isinstance(masks, BitMasks) and tuple(masks.tensor.shape) == (1, 50, 60)
    original = mask_util.decode(polygons_to_rle(triangle, 20, 24))
    assert original.sum() > 0
    enlarged = cv2.resize(original, (60, 50), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(masks.tensor[0].numpy(), enlarged.astype(bool))
    after = MMDetDatasetMapper(**kwargs, rasterize_polygons_at_original_size=False)(dict(record))["instances"].gt_masks
    scaled = [np.asarray(triangle[0]) * 2.5]
    assert np.array_equal(after.tensor[0].numpy(), polygons_to_bitmask(scaled, 50, 60))
    assert not np.array_equal(after.tensor[0].numpy(), masks.tensor[0].numpy())


def test_mapper_refuses_polygon_format_with_original_size_rasterizing():
    with pytest.raises(ValueError, match="needs instance_mask_format='bitmask', got 'polygon'"):
        MMDetDatasetMapper(is_train=True, augmentations=[], image_format="RGB", use_instance_mask=True, instance_mask_format="polygon")
    # without masks the mask format does not matter
    MMDetDatasetMapper(is_train=True, augmentations=[], image_format="RGB", use_instance_mask=False, instance_mask_format="polygon")


# ---- the training set: images whose annotations are all crowd ----------------------------------
def test_crowd_only_images_are_kept_as_mmdetection_keeps_them(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "height": 40, "width": 40} for i in (1, 2, 3)]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 1},
    ]  # image 3: no annotation at all
    json_file = tmp_path / "ann.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}))
    name = f"crowd_only_{uuid.uuid4().hex[:6]}"
    register_coco_instances(name, {}, str(json_file), str(tmp_path))
    mmdet_like = get_detection_dataset_dicts_min_size(name, min_size=32, keep_crowd_only_images=True)
    assert [d["image_id"] for d in mmdet_like] == [1, 2]
    detectron2 = get_detection_dataset_dicts_min_size(name, min_size=32)
    assert [d["image_id"] for d in detectron2] == [1]


# ---- the configs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("detector", MMDET_CONFIGS)
def test_mmdet_configs_use_the_mmdet_pipeline_and_plain_configs_do_not(detector):
    cfg = LazyConfig.load(os.path.join(REPO_ROOT, "configs", "COCO", f"{detector}_rsb_r50_fpn_1x_mmdet.py"))
    mapper = cfg.dataloader.train.mapper
    assert mapper._target_ is MMDetDatasetMapper and mapper.augmentations[0]._target_ is MMDetResize
    assert (tuple(mapper.augmentations[0].short_edge_length), mapper.augmentations[0].max_size) == ((800,), 1333)
    assert mapper.instance_mask_format == "bitmask" and cfg.dataloader.train.dataset.keep_crowd_only_images
    plain = LazyConfig.load(os.path.join(REPO_ROOT, "configs", "COCO", f"{detector}_rsb_r50_fpn_1x.py"))
    assert plain.dataloader.train.mapper.augmentations[0]._target_ is T.ResizeShortestEdge
    assert plain.dataloader.train.mapper._target_ is not MMDetDatasetMapper
