"""The configs are Detectron2's common models with the timm trunk as ``model.backbone.bottom_up``:
Detectron2's FPN stays, with every argument overridable, and the trunk's width reaches RetinaNet's
P6/P7 block."""

import glob
import math
import os

import pytest
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.modeling.backbone.fpn import FPN

from conftest import REPO_ROOT
from rsb_backbone import RetinaNetP6P7, TimmResNet
from rsb_backbone.config import load_config_with_overrides
from rsb_backbone.modeling import MMDetFPN

CONFIGS = sorted(
    p
    for folder in ("COCO", "shapes")
    for p in glob.glob(os.path.join(REPO_ROOT, "configs", folder, "*.py"))
    if not p.endswith("__init__.py")
)
COCO = os.path.join(REPO_ROOT, "configs", "COCO")
MASK_RCNN = os.path.join(COCO, "mask_rcnn_rsb_r50_fpn_1x.py")
RETINANET = os.path.join(COCO, "retinanet_rsb_r50_fpn_1x.py")
RETINANET_MMDET = os.path.join(COCO, "retinanet_rsb_r50_fpn_1x_mmdet.py")
SMALL_TRUNK = ["model.backbone.bottom_up.model_name=resnet18", "model.backbone.bottom_up.weights=None"]


@pytest.mark.parametrize("config", CONFIGS, ids=os.path.basename)
def test_the_backbone_is_detectron2s_fpn_on_the_timm_trunk(config):
    backbone = LazyConfig.load(config).model.backbone
    assert backbone._target_ is (MMDetFPN if config.endswith("_mmdet.py") else FPN)
    assert backbone.bottom_up._target_ is TimmResNet
    assert list(backbone.in_features) == list(backbone.bottom_up.out_features)


def test_fpn_norm_and_fuse_type_are_overridden_without_plus():
    cfg = load_config_with_overrides(MASK_RCNN, SMALL_TRUNK + ["model.backbone.norm=GN", "model.backbone.fuse_type=avg"])
    fpn = instantiate(cfg.model.backbone)
    for name in ("fpn_lateral2", "fpn_output2", "fpn_lateral5", "fpn_output5"):
        assert isinstance(getattr(fpn, name).norm, torch.nn.GroupNorm), name
    assert fpn._fuse_type == "avg"
    plain = instantiate(load_config_with_overrides(MASK_RCNN, SMALL_TRUNK).model.backbone)
    assert plain.fpn_lateral2.norm is None and plain._fuse_type == "sum"


def test_retinanet_with_a_resnet18_trunk_builds_and_runs():
    cfg = load_config_with_overrides(RETINANET, SMALL_TRUNK + ["model.num_classes=3"])
    model = instantiate(cfg.model).eval()
    assert isinstance(model.backbone.top_block, RetinaNetP6P7)
    assert model.backbone.top_block.p6.in_channels == 512  # ResNet-18's C5, not ResNet-50's 2048
    with torch.no_grad():
        outputs = model([{"image": torch.rand(3, 96, 128) * 255}])
    assert outputs[0]["instances"].image_size == (96, 128)


def test_retinanet_in_features_follow_the_trunk():
    cfg = load_config_with_overrides(RETINANET, ["model.backbone.bottom_up.out_features=[res2,res3,res4,res5]"])
    assert list(cfg.model.backbone.in_features) == ["res2", "res3", "res4", "res5"]


def test_mmdet_fpn_starts_xavier_uniform_top_block_included_and_leaves_the_trunk_alone():
    cfg = load_config_with_overrides(RETINANET_MMDET, SMALL_TRUNK)
    torch.manual_seed(0)
    mmdet = instantiate(cfg.model.backbone)
    cfg.model.backbone._target_ = FPN
    torch.manual_seed(0)
    plain = instantiate(cfg.model.backbone)
    fan_in, fan_out = 512 * 9, 256 * 9  # P6: 3x3 conv on ResNet-18's C5
    assert mmdet.top_block.p6.weight.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.03)
    assert plain.top_block.p6.weight.std().item() == pytest.approx(math.sqrt(1 / fan_in), rel=0.03)
    for (name, a), b in zip(mmdet.bottom_up.state_dict().items(), plain.bottom_up.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "config, override, key",
    [
        (RETINANET_MMDET, "model.backbone.mmdet_init=false", "model.backbone.mmdet_init"),  # MMDetFPN says it
        (RETINANET, "model.backbone.top_block.relu=true", "model.backbone.top_block.relu"),
    ],
)
def test_an_override_the_model_does_not_read_is_refused(config, override, key):
    with pytest.raises(ValueError, match=f"has no key {key!r}"):
        load_config_with_overrides(config, [override])
