"""Loading and completing configs of either system for training and inference: where the packaged
configs are, LazyConfig overrides, file kinds, the four detectors' yacs configs, the device, the
heads' classes and score threshold."""

from .files import LAZY, YACS, config_file_kind, configs_root, get_config_file
from .run_settings import (
    dataset_names,
    head_config,
    resolve_device,
    score_threshold_of,
    set_score_threshold,
    check_masks_for_mask_models,
    sync_num_classes,
)
from .lazy_overrides import load_config_with_overrides
from .yacs_configs import ARCHITECTURES, get_rsb_cfg, load_yacs_config, yacs_config_file

__all__ = [
    "ARCHITECTURES",
    "LAZY",
    "YACS",
    "config_file_kind",
    "configs_root",
    "dataset_names",
    "get_config_file",
    "get_rsb_cfg",
    "head_config",
    "load_config_with_overrides",
    "load_yacs_config",
    "resolve_device",
    "score_threshold_of",
    "set_score_threshold",
    "check_masks_for_mask_models",
    "sync_num_classes",
    "yacs_config_file",
]
