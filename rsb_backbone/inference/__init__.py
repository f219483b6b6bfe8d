"""Inference: Detectron2's ``DefaultPredictor`` on yacs configs of the four RSB detectors, and a
predictor with the same interface (BGR images in) for LazyConfigs; usage in the README."""

from ..config import ARCHITECTURES, get_rsb_cfg, load_yacs_config, set_score_threshold, yacs_config_file
from ..checkpoint.detection_checkpoint import load_detector_checkpoint
from .coco_results import contiguous_to_dataset_ids, instances_to_coco_results
from .input_files import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, coco_image_ids, collect_inputs
from .lazy_predictor import LazyConfigPredictor
from .predictors import build_default_predictor, build_predictor

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "coco_image_ids",
    "collect_inputs",
    "ARCHITECTURES",
    "LazyConfigPredictor",
    "build_default_predictor",
    "build_predictor",
    "contiguous_to_dataset_ids",
    "get_rsb_cfg",
    "instances_to_coco_results",
    "load_detector_checkpoint",
    "load_yacs_config",
    "set_score_threshold",
    "yacs_config_file",
]
