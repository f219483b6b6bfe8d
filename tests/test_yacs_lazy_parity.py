"""yacs and LazyConfig builds of the same FPN backbones are the same network."""

import pytest
import torch

from detectron2.config import get_cfg, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from rsb_backbone import RetinaNetP6P7, add_rsb_config, model_zoo


def _signature(module):
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def _yacs_cfg(name, in_features):
    cfg = get_cfg()
    add_rsb_config(cfg)
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    cfg.MODEL.FPN.IN_FEATURES = in_features
    return cfg


def _lazy_backbone(config):
    """The backbone of a COCO LazyConfig, without the ImageNet download."""
    backbone = model_zoo.get_config(f"COCO/{config}").model.backbone
    backbone.bottom_up.weights = None
    return instantiate(backbone)


def test_rcnn_fpn_yacs_equals_lazy():
    cfg = _yacs_cfg("build_rsb_resnet_fpn_backbone", ["res2", "res3", "res4", "res5"])
    yacs_model = build_backbone(cfg)
    lazy_model = _lazy_backbone("mask_rcnn_rsb_r50_fpn_1x.py")
    assert _signature(yacs_model) == _signature(lazy_model)
    assert yacs_model.output_shape() == lazy_model.output_shape()
    assert list(yacs_model.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]
    assert yacs_model.size_divisibility == lazy_model.size_divisibility == 32


def test_retinanet_fpn_yacs_equals_lazy():
    cfg = _yacs_cfg("build_rsb_resnet_retinanet_fpn_backbone", ["res3", "res4", "res5"])
    yacs_model = build_backbone(cfg)
    lazy_model = _lazy_backbone("retinanet_rsb_r50_fpn_1x.py")
    assert _signature(yacs_model) == _signature(lazy_model)
    assert yacs_model.top_block.relu_before_p7 is lazy_model.top_block.relu_before_p7 is False
    assert list(yacs_model.output_shape()) == ["p3", "p4", "p5", "p6", "p7"]
    assert "top_block.p6.weight" in dict(yacs_model.named_parameters())


def test_yacs_reads_weights_and_norm(tmp_path, timm_resnet50_state_dict):
    path = tmp_path / "w.pth"
    torch.save(timm_resnet50_state_dict, path)
    cfg = _yacs_cfg("build_rsb_resnet_backbone", ["res2", "res3", "res4", "res5"])
    cfg.MODEL.RSB.WEIGHTS = str(path)
    cfg.MODEL.RSB.OUT_FEATURES = ["res4", "res5"]
    trunk = build_backbone(cfg)
    assert list(trunk.output_shape()) == ["res4", "res5"]
    assert torch.equal(trunk.layer3[0].conv1.weight, timm_resnet50_state_dict["layer3.0.conv1.weight"])


@pytest.mark.parametrize("relu", [False, True])
def test_p7_relu_switch(relu):
    torch.manual_seed(0)
    top = RetinaNetP6P7(512, 256, relu_before_p7=relu)
    c5 = torch.randn(1, 512, 4, 4)
    p6, p7 = top(c5)
    expected = top.p7(torch.relu(p6) if relu else p6)
    torch.testing.assert_close(p7, expected)
    other = top.p7(p6 if relu else torch.relu(p6))
    assert not torch.allclose(p7, other), "the switch must change P7"


def test_yacs_builder_rejects_non_rgb_input():
    cfg = _yacs_cfg("build_rsb_resnet_fpn_backbone", ["res2", "res3", "res4", "res5"])
    with pytest.raises(ValueError, match="channels=1"):
        build_backbone(cfg, ShapeSpec(channels=1))
