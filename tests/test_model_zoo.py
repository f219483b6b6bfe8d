"""rsb_backbone.model_zoo in a source checkout: configs by name, as Detectron2's model_zoo."""

import os

import pytest

from detectron2.config import CfgNode

from conftest import REPO_ROOT
from rsb_backbone import model_zoo
from rsb_backbone.inference import yacs_config_file


def test_the_checkout_reads_its_own_configs_folder():
    assert model_zoo.configs_root() == os.path.join(REPO_ROOT, "configs")
    assert model_zoo.get_config_file("COCO/mask_rcnn_rsb_r50_fpn_1x.py") == os.path.join(
        REPO_ROOT, "configs", "COCO", "mask_rcnn_rsb_r50_fpn_1x.py"
    )
    assert yacs_config_file("retinanet") == os.path.join(REPO_ROOT, "configs", "yacs", "retinanet_rsb_r50_fpn_1x.yaml")


def test_lazy_and_yacs_configs_by_name():
    lazy = model_zoo.get_config("COCO/retinanet_rsb_r50_fpn_1x.py")
    assert set(lazy.keys()) == {"dataloader", "lr_multiplier", "model", "optimizer", "train"}
    assert list(lazy.model.backbone.bottom_up.out_features) == ["res3", "res4", "res5"]
    yacs = model_zoo.get_config("yacs/shapes/retinanet_rsb_r50_fpn_shapes.yaml")  # _BASE_ relative to it
    assert isinstance(yacs, CfgNode) and yacs.MODEL.META_ARCHITECTURE == "RetinaNet"
    assert yacs.MODEL.BACKBONE.NAME == "build_rsb_resnet_retinanet_fpn_backbone"


@pytest.mark.parametrize("name", ["COCO/no_such_config.py", "../README.md", "/etc/hostname", "COCO"])
def test_an_unknown_config_is_named_in_one_line(name):
    with pytest.raises(FileNotFoundError) as info:
        model_zoo.get_config_file(name)
    message = str(info.value)
    assert repr(name) in message and model_zoo.configs_root() in message and "\n" not in message
