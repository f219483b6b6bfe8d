"""A loaded LazyConfig holds only the keys that are built or read, and overrides of others fail."""

import glob
import os

import pytest

from detectron2.config import LazyConfig

from conftest import REPO_ROOT
from rsb_backbone.config import load_config_with_overrides

CONFIG_KEYS = {"dataloader", "lr_multiplier", "model", "optimizer", "train"}
COCO_CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO_ROOT, "configs", "COCO", "*.py")) if not p.endswith("__init__.py"))
SHAPES_CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO_ROOT, "configs", "shapes", "*.py")) if not p.endswith("__init__.py")
)
MASK_RCNN = os.path.join(REPO_ROOT, "configs", "COCO", "mask_rcnn_rsb_r50_fpn_1x.py")


@pytest.mark.parametrize("config", COCO_CONFIGS + SHAPES_CONFIGS, ids=os.path.basename)
def test_a_loaded_config_has_no_helper_keys(config):
    assert set(LazyConfig.load(config).keys()) == CONFIG_KEYS


@pytest.mark.parametrize(
    "override, key",
    [
        ("rsb_trunk.weights=x", "rsb_trunk.weights"),  # a helper of configs/common/rsb_base.py
        ("PIXEL.input_format=BGR", "PIXEL.input_format"),  # another one
        ("model.not_a_key=1", "model.not_a_key"),  # a typo under a node that exists
    ],
)
def test_an_override_of_a_key_the_config_does_not_use_is_refused(override, key):
    with pytest.raises(ValueError) as info:
        load_config_with_overrides(MASK_RCNN, [override])
    message = str(info.value)
    assert "\n" not in message
    assert f"has no key {key!r}" in message and MASK_RCNN in message


def test_the_trunk_weights_are_overridden_where_the_model_reads_them():
    cfg = load_config_with_overrides(MASK_RCNN, ["model.backbone.bottom_up.weights=None"])
    assert cfg.model.backbone.bottom_up.weights is None
