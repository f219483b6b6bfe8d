"""mmdetection v2 checkpoints -> Detectron2: every tensor accounted for, RetinaNet's anchor order
re-derived from both libraries' formulas, refusals naming the file, and the mmdetection-faithful
cascade and RetinaNet options doing what their docstrings say.

The mmdetection side is written here from mmdetection v2's module definitions, independently of
the converter's tables: key names and shapes (``mmdet_layout``), anchor generation, the head
output layout and ``delta2bbox``. When ``projects/mmdet_checkpoints/mmdet_v2_layouts.json`` (key
names and shapes dumped from real mmdetection 2.28.2 models) is present, the layouts are also
checked against it.
"""

import copy
import functools
import json
import math
import os
import pickle
from typing import Dict, Tuple

import pytest
import torch
import torch.nn.functional as F

from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from rsb_backbone.checkpoint import AtomicCheckpointer
from rsb_backbone.mmdet_conversion import (
    DEFAULT_CONFIGS,
    DETECTORS,
    RETINANET_ANCHOR_ORDER,
    MMDetConversionError,
    convert_mmdet_checkpoint,
    convert_state_dict,
    detect_detector,
    map_key,
    permute_anchor_blocks,
)
from rsb_backbone.mmdet_conversion import convert as convert_module
from rsb_backbone.checkpoint.tensor_files import WeightFileError, load_tensor_file

from conftest import REPO_ROOT

NUM_CLASSES = 80  # COCO
RESNET50_BLOCKS = (3, 4, 6, 3)
LAYOUTS_JSON = os.path.join(REPO_ROOT, "projects", "mmdet_checkpoints", "mmdet_v2_layouts.json")


# ---- mmdetection v2 key layout, from its module definitions ------------------------------------


def _conv(prefix: str, out_ch: int, in_ch: int, k: int, bias: bool = True) -> Dict[str, Tuple[int, ...]]:
    shapes = {f"{prefix}.weight": (out_ch, in_ch, k, k)}
    if bias:
        shapes[f"{prefix}.bias"] = (out_ch,)
    return shapes


def _bn(prefix: str, ch: int) -> Dict[str, Tuple[int, ...]]:
    shapes = {f"{prefix}.{n}": (ch,) for n in ("weight", "bias", "running_mean", "running_var")}
    shapes[f"{prefix}.num_batches_tracked"] = ()
    return shapes


def _resnet50() -> Dict[str, Tuple[int, ...]]:
    # mmdet ResNet(depth=50): conv1/bn1 stem; Bottleneck conv1..3 + bn1..3 (expansion 4);
    # downsample = Sequential(conv1x1, BN) on the first block of each stage.
    shapes = {**_conv("backbone.conv1", 64, 3, 7, bias=False), **_bn("backbone.bn1", 64)}
    in_ch = 64
    for stage, blocks in enumerate(RESNET50_BLOCKS, start=1):
        planes = 64 * 2 ** (stage - 1)
        for j in range(blocks):
            p = f"backbone.layer{stage}.{j}"
            shapes.update(_conv(f"{p}.conv1", planes, in_ch, 1, bias=False))
            shapes.update(_bn(f"{p}.bn1", planes))
            shapes.update(_conv(f"{p}.conv2", planes, planes, 3, bias=False))
            shapes.update(_bn(f"{p}.bn2", planes))
            shapes.update(_conv(f"{p}.conv3", planes * 4, planes, 1, bias=False))
            shapes.update(_bn(f"{p}.bn3", planes * 4))
            if j == 0:
                shapes.update(_conv(f"{p}.downsample.0", planes * 4, in_ch, 1, bias=False))
                shapes.update(_bn(f"{p}.downsample.1", planes * 4))
            in_ch = planes * 4
    return shapes


def _fpn(in_channels, extra_on_input: int = 0) -> Dict[str, Tuple[int, ...]]:
    # FPN ConvModules (no norm/act) hold their conv as ".conv".
    shapes = {}
    for i, c in enumerate(in_channels):
        shapes.update(_conv(f"neck.lateral_convs.{i}.conv", 256, c, 1))
        shapes.update(_conv(f"neck.fpn_convs.{i}.conv", 256, 256, 3))
    for j in range(extra_on_input):  # add_extra_convs="on_input": first from C5, then from P6
        in_ch = 2048 if j == 0 else 256
        shapes.update(_conv(f"neck.fpn_convs.{len(in_channels) + j}.conv", 256, in_ch, 3))
    return shapes


def _rpn() -> Dict[str, Tuple[int, ...]]:
    return {
        **_conv("rpn_head.rpn_conv", 256, 256, 3),
        **_conv("rpn_head.rpn_cls", 3, 256, 1),  # 3 anchors, sigmoid
        **_conv("rpn_head.rpn_reg", 12, 256, 1),
    }


def _bbox_head(prefix: str, reg_out: int) -> Dict[str, Tuple[int, ...]]:
    # Shared2FCBBoxHead: 256*7*7 -> 1024 -> 1024; cls 80+1; reg 4 per class or 4 (agnostic)
    return {
        f"{prefix}.shared_fcs.0.weight": (1024, 256 * 7 * 7),
        f"{prefix}.shared_fcs.0.bias": (1024,),
        f"{prefix}.shared_fcs.1.weight": (1024, 1024),
        f"{prefix}.shared_fcs.1.bias": (1024,),
        f"{prefix}.fc_cls.weight": (NUM_CLASSES + 1, 1024),
        f"{prefix}.fc_cls.bias": (NUM_CLASSES + 1,),
        f"{prefix}.fc_reg.weight": (reg_out, 1024),
        f"{prefix}.fc_reg.bias": (reg_out,),
    }


def _mask_head(prefix: str) -> Dict[str, Tuple[int, ...]]:
    # FCNMaskHead: 4 ConvModules, ConvTranspose2d (weight in, out, k, k), 1x1 logits per class
    shapes = {}
    for i in range(4):
        shapes.update(_conv(f"{prefix}.convs.{i}.conv", 256, 256, 3))
    shapes[f"{prefix}.upsample.weight"] = (256, 256, 2, 2)
    shapes[f"{prefix}.upsample.bias"] = (256,)
    shapes.update(_conv(f"{prefix}.conv_logits", NUM_CLASSES, 256, 1))
    return shapes


def mmdet_layout(detector: str) -> Dict[str, Tuple[int, ...]]:
    """Key names and shapes of an mmdetection v2 R-50-FPN COCO detector's state dict."""
    shapes = _resnet50()
    if detector == "retinanet":
        shapes.update(_fpn((512, 1024, 2048), extra_on_input=2))
        for branch in ("cls_convs", "reg_convs"):
            for i in range(4):
                shapes.update(_conv(f"bbox_head.{branch}.{i}.conv", 256, 256, 3))
        shapes.update(_conv("bbox_head.retina_cls", 9 * NUM_CLASSES, 256, 3))
        shapes.update(_conv("bbox_head.retina_reg", 9 * 4, 256, 3))
        return shapes
    shapes.update(_fpn((256, 512, 1024, 2048)))
    shapes.update(_rpn())
    if detector == "cascade_mask_rcnn":
        for stage in range(3):  # CascadeRoIHead replicates bbox_head and mask_head per stage
            shapes.update(_bbox_head(f"roi_head.bbox_head.{stage}", 4))
            shapes.update(_mask_head(f"roi_head.mask_head.{stage}"))
        return shapes
    shapes.update(_bbox_head("roi_head.bbox_head", 4 * NUM_CLASSES))
    if detector == "mask_rcnn":
        shapes.update(_mask_head("roi_head.mask_head"))
    return shapes


def synthesize_state_dict(detector: str, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random tensors in ``detector``'s mmdetection layout, every one distinct (a new dict of
    shared tensors: callers may add or remove keys, not change tensors in place)."""
    return dict(_synthesize(detector, seed))


@functools.lru_cache(maxsize=None)
def _synthesize(detector: str, seed: int) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, shape in mmdet_layout(detector).items():
        if key.endswith("num_batches_tracked"):
            state_dict[key] = torch.randint(1, 10**6, (), generator=g, dtype=torch.int64)
        elif key.endswith("running_var"):
            state_dict[key] = 0.5 + torch.rand(shape, generator=g)
        else:
            state_dict[key] = 0.01 * torch.randn(shape, generator=g)
    return state_dict


def save_mmdet_checkpoint(path, state_dict, classes=tuple(f"class{i}" for i in range(NUM_CLASSES))) -> str:
    # mmcv.runner.save_checkpoint's layout; publish_model.py saves with the legacy serialization.
    meta = {
        "mmdet_version": "2.22.0",
        "mmcv_version": "1.4.4",
        "CLASSES": tuple(classes),
        "config": "model = dict(type='MaskRCNN', ...)",
        "env_info": "sys.platform: linux",
        "epoch": 12,
        "iter": 87960,
        "seed": 0,
        "hook_msgs": {"last_ckpt": "work_dirs/epoch_12.pth"},
    }
    torch.save({"meta": meta, "state_dict": state_dict}, str(path), _use_new_zipfile_serialization=False)
    return str(path)


# ---- Detectron2 models, built once per config ---------------------------------------------------

_build_target_model = convert_module.build_target_model


@functools.lru_cache(maxsize=None)
def _model(config: str):
    return _build_target_model(os.path.join(REPO_ROOT, config))


@pytest.fixture
def cached_models(monkeypatch):
    """convert_mmdet_checkpoint builds each config's model once for the whole test session."""
    monkeypatch.setattr(
        convert_module, "build_target_model", lambda path: _model(os.path.relpath(path, REPO_ROOT))
    )
    return lambda detector: _model(DEFAULT_CONFIGS[detector])


# ---- layout ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.isfile(LAYOUTS_JSON), reason="no layouts dumped from real mmdetection")
@pytest.mark.parametrize("detector", DETECTORS)
def test_layout_equals_real_mmdetection(detector):
    with open(LAYOUTS_JSON) as f:
        recorded = json.load(f)["layouts"][detector]
    written = {k: list(v) for k, v in mmdet_layout(detector).items()}
    assert sorted(written) == sorted(recorded)
    assert written == recorded


@pytest.mark.parametrize("detector", DETECTORS)
def test_detector_detected_from_keys(detector):
    assert detect_detector(mmdet_layout(detector)) == detector


# ---- conversion: every tensor accounted for ------------------------------------------------------


@pytest.mark.parametrize("detector", DETECTORS)
def test_convert_every_tensor(detector, cached_models, tmp_path):
    source = synthesize_state_dict(detector, seed=DETECTORS.index(detector))
    src = save_mmdet_checkpoint(tmp_path / f"{detector}_mmdet.pth", source)
    out = tmp_path / f"{detector}_d2.pth"
    report = convert_mmdet_checkpoint(src, str(out))  # detector "auto"

    assert report.detector == detector
    written = load_tensor_file(str(out))  # tensors-only, as every loader here reads it
    converted = written["model"]
    assert written["mmdet_conversion"]["detector"] == detector
    assert written["mmdet_conversion"]["classes"][0] == "class0"
    model = cached_models(detector)
    target = model.state_dict()
    # Keys and shapes equal the model's exactly; nothing dropped (every BN keeps its counter).
    assert sorted(converted) == sorted(target)
    assert all(converted[k].shape == target[k].shape for k in target)
    assert report.dropped == [] and report.num_tensors == len(source) == len(target)

    # Each mmdetection tensor lands, unchanged or anchor-permuted, in exactly one place.
    used = set()
    for key, tensor in source.items():
        target_key, transform = map_key(detector, key)
        expected = permute_anchor_blocks(tensor, RETINANET_ANCHOR_ORDER) if transform else tensor
        assert torch.equal(converted[target_key], expected), key
        used.add(target_key)
    assert used == set(target)
    assert sorted(report.transformed) == (
        ["head.bbox_pred.bias", "head.bbox_pred.weight", "head.cls_score.bias", "head.cls_score.weight"]
        if detector == "retinanet"
        else []
    )

    # Loading as train_net.py --eval-only does: nothing missing, nothing unexpected.
    with torch.no_grad():
        for t in model.state_dict().values():  # parameters and persistent buffers, in place
            t.zero_()
    AtomicCheckpointer(model).load(str(out))
    for key, value in model.state_dict().items():
        assert torch.equal(value, converted[key]), key


def test_frozen_batchnorm_without_counter_is_reported():
    """A FrozenBatchNorm2d made directly has no num_batches_tracked: that counter is dropped, listed."""
    source = {
        "backbone.bn1.running_mean": torch.zeros(64),
        "backbone.bn1.num_batches_tracked": torch.tensor(5),
    }
    target = {"backbone.bottom_up.bn1.running_mean": torch.ones(64)}
    converted, report = convert_state_dict(source, "faster_rcnn", target)
    assert list(converted) == ["backbone.bottom_up.bn1.running_mean"]
    assert report.dropped == ["backbone.bn1.num_batches_tracked"]


# ---- refusals --------------------------------------------------------------------------------------


@pytest.fixture
def faster_target():
    return {k: torch.empty(v) for k, v in _d2_faster_shapes().items()}


@functools.lru_cache(maxsize=None)
def _d2_faster_shapes():
    return {k: tuple(v.shape) for k, v in _model(DEFAULT_CONFIGS["faster_rcnn"]).state_dict().items()}


def test_unknown_extra_missing_and_misshaped_keys_are_named(faster_target):
    source = synthesize_state_dict("faster_rcnn")
    source["roi_head.bbox_head.fc_extra.weight"] = torch.zeros(3)
    del source["neck.fpn_convs.2.conv.bias"]
    source["roi_head.bbox_head.fc_cls.weight"] = torch.zeros(21, 1024)  # a VOC head
    with pytest.raises(MMDetConversionError) as info:
        convert_state_dict(source, "faster_rcnn", faster_target, source="ckpt.pth")
    message = str(info.value)
    assert message.startswith("ckpt.pth: cannot convert")
    assert "roi_head.bbox_head.fc_extra.weight" in message  # matches no rule
    assert "backbone.fpn_output4.bias" in message  # nothing provides it
    assert "(21, 1024)" in message and "(81, 1024)" in message  # shape mismatch


def test_deeper_backbone_refused(faster_target):
    source = synthesize_state_dict("faster_rcnn")
    source["backbone.layer3.6.conv1.weight"] = torch.zeros(256, 1024, 1, 1)  # a ResNet-101 block
    with pytest.raises(MMDetConversionError, match=r"have no place in .*backbone\.layer3\.6\.conv1\.weight"):
        convert_state_dict(source, "faster_rcnn", faster_target)


def test_unknown_checkpoint_refused(tmp_path):
    state_dict = {k: v for k, v in synthesize_state_dict("faster_rcnn").items() if k.startswith("backbone.")}
    state_dict["bbox_head.fcos_cls.weight"] = torch.zeros(80, 256, 3, 3)
    path = save_mmdet_checkpoint(tmp_path / "fcos.pth", state_dict)
    with pytest.raises(MMDetConversionError, match=r"fcos\.pth: not a checkpoint of one of the supported"):
        convert_mmdet_checkpoint(path, str(tmp_path / "out.pth"))
    assert not (tmp_path / "out.pth").exists()


def test_box_only_cascade_refused():
    state_dict = {k: v for k, v in mmdet_layout("cascade_mask_rcnn").items() if ".mask_head." not in k}
    with pytest.raises(MMDetConversionError, match="Cascade R-CNN without mask heads"):
        detect_detector(state_dict, "cascade_rcnn.pth")


def test_wrong_detector_option_refused(tmp_path):
    path = save_mmdet_checkpoint(tmp_path / "retina.pth", synthesize_state_dict("retinanet"))
    with pytest.raises(
        MMDetConversionError,
        match=r"retina\.pth: --detector mask_rcnn given, but the checkpoint holds a retinanet",
    ):
        convert_mmdet_checkpoint(path, str(tmp_path / "out.pth"), detector="mask_rcnn")


def test_cascade_into_stock_config_refused():
    """mmdet's three mask heads do not fit the stock cascade config's one: refuse, name the _mmdet config."""
    source = synthesize_state_dict("cascade_mask_rcnn")
    stock_target = {"roi_heads.mask_head.mask_fcn1.weight": torch.empty(256, 256, 3, 3)}
    with pytest.raises(
        MMDetConversionError, match=r"three mask heads.*cascade_mask_rcnn_rsb_r50_fpn_1x_mmdet\.py"
    ):
        convert_state_dict(source, "cascade_mask_rcnn", stock_target, source="c.pth", target_name="stock")


def test_truncated_file_names_it(tmp_path):
    path = save_mmdet_checkpoint(tmp_path / "full.pth", {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)})
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(path, "rb").read()[:200])
    with pytest.raises(WeightFileError, match=r"truncated\.pth"):
        convert_mmdet_checkpoint(str(truncated), str(tmp_path / "out.pth"))


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_arbitrary_pickle_refused(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"meta": {"x": _Payload()}, "state_dict": {"a": torch.zeros(1)}}, str(path))
    with pytest.raises(WeightFileError, match=r"foreign\.pth: refused to load"):
        convert_mmdet_checkpoint(str(path), str(tmp_path / "out.pth"))


def test_foreign_files_named(tmp_path):
    d2 = tmp_path / "model_final.pth"
    torch.save({"model": {"a": torch.zeros(1)}, "iteration": 3}, str(d2))
    with pytest.raises(MMDetConversionError, match=r"model_final\.pth: has a 'model' entry"):
        convert_mmdet_checkpoint(str(d2), str(tmp_path / "out.pth"))
    odd = tmp_path / "odd.pth"
    torch.save({"state_dict": {"a": torch.zeros(1), "b": [1, 2]}}, str(odd))
    with pytest.raises(
        MMDetConversionError, match=r"odd\.pth: 'state_dict' entry 'b' is a list, not a tensor \(1 such entries\)"
    ):
        convert_mmdet_checkpoint(str(odd), str(tmp_path / "out.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        convert_mmdet_checkpoint(str(tmp_path / "missing.pth"), str(tmp_path / "out.pth"))


def test_command_line(cached_models, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "convert_mmdet_checkpoint",
        os.path.join(REPO_ROOT, "projects", "mmdet_checkpoints", "convert_mmdet_checkpoint.py"),
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    src = save_mmdet_checkpoint(tmp_path / "faster.pth", synthesize_state_dict("faster_rcnn"))
    assert cli.main(["--detector", "faster_rcnn", src, str(tmp_path / "d2.pth")]) == 0
    assert "faster_rcnn, 348 tensors converted" in capsys.readouterr().out
    assert cli.main([str(tmp_path / "nothing.pth"), str(tmp_path / "d2.pth")]) == 2
    assert "error: " in capsys.readouterr().err and (tmp_path / "d2.pth").exists()


# ---- RetinaNet's anchor order, from both libraries' formulas --------------------------------------


def mmdet_base_anchors(stride, ratios, scales):
    """mmdet AnchorGenerator.gen_single_level_base_anchors (center_offset 0, scale_major=True)."""
    ratios, scales = torch.tensor(ratios, dtype=torch.float64), torch.tensor(scales, dtype=torch.float64)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
    return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)


def mmdet_grid_anchors(base, height, width, stride):
    """mmdet single_level_grid_priors: row-major locations, then the base anchors of each."""
    shift_x = torch.arange(width, dtype=torch.float64) * stride
    shift_y = torch.arange(height, dtype=torch.float64) * stride
    xx, yy = shift_x.repeat(len(shift_y)), shift_y.view(-1, 1).repeat(1, len(shift_x)).view(-1)
    shifts = torch.stack([xx, yy, xx, yy], dim=-1)
    return (base[None, :, :] + shifts[:, None, :]).reshape(-1, 4)


def mmdet_delta2bbox(rois, deltas, max_ratio=abs(math.log(16 / 1000))):
    """mmdet DeltaXYWHBBoxCoder.decode with means 0, stds 1, no clipping."""
    dx, dy, dw, dh = deltas.unbind(-1)
    dw, dh = dw.clamp(-max_ratio, max_ratio), dh.clamp(-max_ratio, max_ratio)
    px, py = (rois[:, 0] + rois[:, 2]) * 0.5, (rois[:, 1] + rois[:, 3]) * 0.5
    pw, ph = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
    gw, gh = pw * dw.exp(), ph * dh.exp()
    gx, gy = px + pw * dx, py + ph * dy
    return torch.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], dim=-1)


def mmdet_retina_head(mmdet_sd, feature):
    """mmdet RetinaHead.forward_single on one level, then its (H*W*A, K) flattening."""
    cls, reg = feature, feature
    for i in range(4):
        cls = F.relu(
            F.conv2d(
                cls,
                mmdet_sd[f"bbox_head.cls_convs.{i}.conv.weight"],
                mmdet_sd[f"bbox_head.cls_convs.{i}.conv.bias"],
                padding=1,
            )
        )
        reg = F.relu(
            F.conv2d(
                reg,
                mmdet_sd[f"bbox_head.reg_convs.{i}.conv.weight"],
                mmdet_sd[f"bbox_head.reg_convs.{i}.conv.bias"],
                padding=1,
            )
        )
    cls = F.conv2d(
        cls, mmdet_sd["bbox_head.retina_cls.weight"], mmdet_sd["bbox_head.retina_cls.bias"], padding=1
    )
    reg = F.conv2d(
        reg, mmdet_sd["bbox_head.retina_reg.weight"], mmdet_sd["bbox_head.retina_reg.bias"], padding=1
    )
    return cls[0].permute(1, 2, 0).reshape(-1, NUM_CLASSES), reg[0].permute(1, 2, 0).reshape(-1, 4)


def _d2_retinanet_outputs(model, converted, features):
    from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K

    model.load_state_dict(converted)
    with torch.no_grad():
        cls, reg = model.head(features)
        anchors = model.anchor_generator(features)
    return (
        [permute_to_N_HWA_K(c, NUM_CLASSES)[0] for c in cls],
        [permute_to_N_HWA_K(r, 4)[0] for r in reg],
        anchors,
    )


@pytest.mark.parametrize(
    "order", [RETINANET_ANCHOR_ORDER, tuple(range(9))], ids=["converter", "no-permutation"]
)
def test_retinanet_anchor_order(order, cached_models):
    """Per location, each (anchor shape, class) score and decoded box of the converted Detectron2
    head equals mmdetection's computed from the unconverted tensors; without the permutation
    they do not (the test has power)."""
    model = cached_models("retinanet")
    source = synthesize_state_dict("retinanet", seed=7)
    converted, _ = convert_state_dict(source, "retinanet", model.state_dict())
    for name in (
        "head.cls_score.weight",
        "head.cls_score.bias",
        "head.bbox_pred.weight",
        "head.bbox_pred.bias",
    ):
        key = {"head.cls_score": "bbox_head.retina_cls", "head.bbox_pred": "bbox_head.retina_reg"}[
            name.rsplit(".", 1)[0]
        ]
        converted[name] = permute_anchor_blocks(source[f"{key}.{name.rsplit('.', 1)[1]}"], order)
    g = torch.Generator().manual_seed(1)
    strides = (8, 16, 32, 64, 128)
    sizes = [(6, 5), (3, 3), (2, 2), (1, 1), (1, 1)]
    features = [torch.randn(1, 256, h, w, generator=g) for h, w in sizes]
    d2_cls, d2_reg, d2_anchors = _d2_retinanet_outputs(model, converted, features)

    scales = [4 * 2 ** (i / 3) for i in range(3)]  # octave_base_scale 4, scales_per_octave 3
    matches = True
    for level, (stride, (h, w)) in enumerate(zip(strides, sizes)):
        mm_cls, mm_reg = mmdet_retina_head(source, features[level])
        mm_anchors = mmdet_grid_anchors(mmdet_base_anchors(stride, (0.5, 1.0, 2.0), scales), h, w, stride)
        d2_a = d2_anchors[level].tensor.double()
        # Anchors: Detectron2's anchor j at a location is mmdetection's anchor ORDER[j] there.
        torch.testing.assert_close(
            d2_a.view(h * w, 9, 4),
            mm_anchors.view(h * w, 9, 4)[:, list(RETINANET_ANCHOR_ORDER)],
            rtol=0,
            atol=1e-4,
        )
        # Match rows by anchor geometry, never by index, then compare scores and decoded boxes.
        distance = torch.cdist(d2_a, mm_anchors)
        mm_row = distance.argmin(dim=1)
        assert torch.all(distance.min(dim=1).values < 1e-3) and len(set(mm_row.tolist())) == len(mm_row)
        mm_boxes = mmdet_delta2bbox(mm_anchors, mm_reg.double())
        d2_boxes = model.box2box_transform.apply_deltas(d2_reg[level], d2_a.float()).double()
        same_scores = torch.allclose(d2_cls[level].sigmoid(), mm_cls[mm_row].sigmoid(), rtol=0, atol=1e-5)
        same_boxes = torch.allclose(d2_boxes, mm_boxes[mm_row], rtol=0, atol=1e-3)
        matches = matches and same_scores and same_boxes
    assert matches == (order == RETINANET_ANCHOR_ORDER)


def test_rpn_anchors_need_no_permutation(cached_models):
    """RPN: one scale (8 x stride) x 3 ratios: both libraries order anchors by ratio."""
    model = cached_models("faster_rcnn")
    features = [torch.zeros(1, 256, 2, 3) for _ in range(5)]
    d2_anchors = model.proposal_generator.anchor_generator(features)
    for level, stride in enumerate((4, 8, 16, 32, 64)):
        mm = mmdet_grid_anchors(mmdet_base_anchors(stride, (0.5, 1.0, 2.0), (8.0,)), 2, 3, stride)
        torch.testing.assert_close(d2_anchors[level].tensor.double(), mm, rtol=0, atol=1e-4)


def test_permutation_is_a_transpose_and_self_inverse():
    # mmdet index 3 * ratio + scale; Detectron2 index 3 * scale + ratio
    assert RETINANET_ANCHOR_ORDER == tuple(3 * (j % 3) + j // 3 for j in range(9))
    t = torch.arange(9 * 80 * 2).view(9 * 80, 2)
    assert torch.equal(
        permute_anchor_blocks(permute_anchor_blocks(t, RETINANET_ANCHOR_ORDER), RETINANET_ANCHOR_ORDER), t
    )
    with pytest.raises(ValueError, match="not a multiple of 9 anchors"):
        permute_anchor_blocks(torch.zeros(10), RETINANET_ANCHOR_ORDER)


# ---- mmdetection-faithful options ------------------------------------------------------------------


def test_retinanet_clips_before_nms(cached_models):
    """Two boxes leaving the image: IoU 0.42 unclipped (Detectron2 keeps both), 1.0 clipped
    (mmdetection keeps one)."""
    model = cached_models("retinanet")
    anchors = [Boxes(torch.tensor([[50.0, 10.0, 170.0, 60.0], [50.0, 10.0, 100.0, 60.0]]))]
    logits = torch.full((2, NUM_CLASSES), -10.0)
    logits[:, 3] = torch.tensor([2.0, 1.0])
    deltas = torch.zeros(2, 4)
    kept = {}
    for clip in (True, False):
        model.clip_boxes_before_nms = clip
        kept[clip] = model.inference_single_image(anchors, [logits], [deltas], (100, 100))
    model.clip_boxes_before_nms = True
    assert len(kept[True]) == 1 and len(kept[False]) == 2
    assert kept[True].pred_boxes.tensor.tolist() == [[50.0, 10.0, 100.0, 60.0]]


@functools.lru_cache(maxsize=None)
def _cascade_roi_heads_cfg():
    cfg = LazyConfig.load(os.path.join(REPO_ROOT, DEFAULT_CONFIGS["cascade_mask_rcnn"]))
    cfg.model.roi_heads.num_classes = 3  # small heads and few sampled RoIs: fast
    cfg.model.roi_heads.batch_size_per_image = 64
    return cfg.model.roi_heads


@functools.lru_cache(maxsize=None)
def _cascade_heads_base():
    torch.manual_seed(0)
    heads = instantiate(_cascade_roi_heads_cfg())
    for predictor in heads.box_predictor:  # informative scores and boxes
        torch.nn.init.normal_(predictor.cls_score.weight, std=0.05)
        torch.nn.init.normal_(predictor.bbox_pred.weight, std=0.05)
    for head in heads.mask_head:
        torch.nn.init.normal_(head.predictor.weight, std=0.05)
    return heads


def _cascade_heads(**options):
    """The _mmdet config's RoI heads (built once), with some constructor options changed."""
    heads = copy.deepcopy(_cascade_heads_base())
    for name, value in options.items():
        assert hasattr(heads, name), name
        setattr(heads, name, tuple(value) if isinstance(value, list) else value)
    return heads


def _inputs(seed=0, num_proposals=100, size=128):
    g = torch.Generator().manual_seed(seed)
    features = {f"p{l}": torch.randn(1, 256, size // 2**l, size // 2**l, generator=g) for l in range(2, 7)}
    xy = torch.rand(num_proposals, 2, generator=g) * size * 0.8
    wh = 8 + torch.rand(num_proposals, 2, generator=g) * size * 0.4
    proposals = Instances((size, size))
    proposals.proposal_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=size)], dim=1))
    proposals.objectness_logits = torch.randn(num_proposals, generator=g)
    targets = Instances((size, size))
    targets.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 60.0, 70.0], [50.0, 40.0, 120.0, 110.0]]))
    targets.gt_classes = torch.tensor([0, 2])
    masks = torch.zeros(2, size, size, dtype=torch.bool)
    masks[0, 10:70, 10:60] = True
    masks[1, 40:110, 50:120] = True
    from detectron2.structures import BitMasks

    targets.gt_masks = BitMasks(masks)
    return features, [proposals], [targets]


def test_cascade_scores_average_logits(monkeypatch):
    from rsb_backbone.modeling import mmdet_cascade

    captured = {}

    def capture(boxes, scores, image_sizes, *args):
        captured["scores"] = scores[0]
        return [Instances(image_sizes[0])], None

    monkeypatch.setattr(mmdet_cascade, "fast_rcnn_inference", capture)
    features, proposals, _ = _inputs()
    results = {}
    for averaging in ("logits", "probs"):
        heads = _cascade_heads(score_averaging=averaging).eval()
        stage_logits = []
        run_stage = heads._run_stage
        monkeypatch.setattr(
            heads, "_run_stage", lambda f, p, s: stage_logits.append(run_stage(f, p, s)) or stage_logits[-1]
        )
        with torch.no_grad():
            heads._forward_box(features, proposals)
        logits = torch.stack([p[0] for p in stage_logits])
        expected = logits.mean(0).softmax(-1) if averaging == "logits" else logits.softmax(-1).mean(0)
        torch.testing.assert_close(captured["scores"], expected)
        results[averaging] = captured["scores"]
    assert (results["logits"] - results["probs"]).abs().max() > 1e-4  # the two rules differ


def test_cascade_masks_average_three_heads():
    heads = _cascade_heads().eval()
    features, _, _ = _inputs()
    instances = Instances((128, 128))
    instances.pred_boxes = Boxes(torch.tensor([[10.0, 10.0, 60.0, 70.0], [50.0, 40.0, 120.0, 110.0]]))
    instances.pred_classes = torch.tensor([0, 2])
    with torch.no_grad():
        out = heads._forward_mask(features, [instances])[0].pred_masks
        pooled = heads.mask_pooler([features[f] for f in heads.mask_in_features], [instances.pred_boxes])
        per_head = [
            h.layers(pooled)[torch.arange(2), instances.pred_classes][:, None].sigmoid()
            for h in heads.mask_head
        ]
    assert len(per_head) == 3 and out.shape == (2, 1, 28, 28)
    torch.testing.assert_close(out, sum(per_head) / 3)
    assert (out - per_head[2]).abs().max() > 1e-4  # not the last head alone


def _train_losses(heads, seed=0):
    features, proposals, targets = _inputs()
    features = {k: v.clone().requires_grad_(True) for k, v in features.items()}
    heads.train()
    torch.manual_seed(seed)
    with EventStorage():
        _, losses = heads(None, features, proposals, targets)
    return losses, features


def test_cascade_stage_loss_weights():
    losses_mmdet, features_mmdet = _train_losses(_cascade_heads())
    losses_equal, _ = _train_losses(_cascade_heads(stage_loss_weights=[1.0, 1.0, 1.0]))
    assert sorted(losses_mmdet) == sorted(
        f"{name}_stage{s}" for s in range(3) for name in ("loss_cls", "loss_box_reg", "loss_mask")
    )
    for name, value in losses_mmdet.items():
        weight = (1.0, 0.5, 0.25)[int(name[-1])]
        torch.testing.assert_close(value, losses_equal[name] * weight)


def test_cascade_gradient_scaling_switch():
    """Detectron2 scales each stage's RoI-feature gradient by 1/3; mmdetection does not."""
    grads = {}
    for scale in (False, True):
        losses, features = _train_losses(_cascade_heads(scale_stage_gradients=scale))
        sum(v for n, v in losses.items() if not n.startswith("loss_mask")).backward()
        grads[scale] = features["p2"].grad.clone()
    torch.testing.assert_close(grads[True], grads[False] / 3)


def test_cascade_resamples_each_stage(monkeypatch):
    seen = {}
    for resample in (True, False):
        heads = _cascade_heads(resample_each_stage=resample)
        stages = []
        run_stage = heads._run_stage
        monkeypatch.setattr(heads, "_run_stage", lambda f, p, s: stages.append(p[0]) or run_stage(f, p, s))
        _train_losses(heads)
        seen[resample] = stages
    # mmdetection: every stage samples <= 64 RoIs (batch_size_per_image here) and gets both GT
    # boxes again as RoIs.
    for stage in seen[True]:
        assert len(stage) <= 64 and int(stage.proposal_is_gt.sum()) == 2
        assert {tuple(b) for b in stage.proposal_boxes.tensor[stage.proposal_is_gt].tolist()} == {
            (10.0, 10.0, 60.0, 70.0),
            (50.0, 40.0, 120.0, 110.0),
        }
    # Detectron2: later stages are the refined first-stage sample, no exact GT box added again.
    assert int(seen[False][1].proposal_is_gt.sum()) == 0
    assert len(seen[False][1]) <= len(seen[False][0])


def test_cascade_yacs_builds_three_mask_heads():
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads import build_roi_heads

    import rsb_backbone.modeling  # noqa: F401  (registers the heads)

    cfg = get_cfg()
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_HEADS.NAME = "MMDetCascadeROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 4
    shapes = {f"p{l}": ShapeSpec(channels=256, stride=2**l) for l in range(2, 6)}
    heads = build_roi_heads(cfg, shapes)
    assert len(heads.mask_head) == 3 and heads.score_averaging == "logits"
    assert heads.stage_loss_weights == (1.0, 0.5, 0.25) and not heads.scale_stage_gradients


def test_mmdet_cascade_config_options():
    cfg = _cascade_roi_heads_cfg()
    assert cfg.stage_loss_weights == [1.0, 0.5, 0.25]
    assert cfg.score_averaging == "logits" and cfg.resample_each_stage and not cfg.scale_stage_gradients
    # mmdet stage-3 stds (0.033, 0.067) -> weights 30.30, 14.93 (not the stock 30, 15)
    weights = [tuple(p.box2box_transform.weights) for p in cfg.box_predictors]
    assert weights[2] == pytest.approx((1 / 0.033, 1 / 0.033, 1 / 0.067, 1 / 0.067))
    assert all(p.smooth_l1_beta == 1.0 for p in cfg.box_predictors)
