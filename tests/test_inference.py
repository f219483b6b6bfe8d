"""Inference: DefaultPredictor on the yacs configs, LazyConfigPredictor, the demo, yacs evaluation.

The slow tests share the session's checkpoints of the four shapes detectors, each trained for three
iterations by ``train_net.py`` (tests/trained_detectors.py). The trunk is ResNet-18 to save CPU
time: the FPN takes its input channels from the trunk's output shapes, so yacs and LazyConfig
models change together and the comparisons stay meaningful.
"""

import contextlib
import copy
import importlib.util
import io
import json
import os
import subprocess
import sys
import types

import cv2
import numpy as np
import pytest
import torch
from omegaconf import ListConfig, OmegaConf

import detectron2.data.transforms as T
from detectron2.config import instantiate
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.structures import pairwise_iou

from conftest import REPO_ROOT
from rsb_backbone import pixel_normalization
from rsb_backbone.data import register_coco_instances_checked
from rsb_backbone.data.datasets.shapes import generate_shapes_dataset
from rsb_backbone.config import LAZY, YACS, config_file_kind, load_config_with_overrides
from rsb_backbone.inference import (
    ARCHITECTURES,
    LazyConfigPredictor,
    build_default_predictor,
    coco_image_ids,
    collect_inputs,
    get_rsb_cfg,
    load_detector_checkpoint,
    load_yacs_config,
    yacs_config_file,
)
from rsb_backbone.checkpoint.tensor_files import WeightFileError

ARCHS = tuple(ARCHITECTURES)
TRUNK = "resnet18"
MIN_SIZE, MAX_SIZE = 128, 192  # test resize (shapes configs: 160 / 256), smaller for CPU time
TRAIN_NAME, VAL_NAME = "inference_tiny_train", "inference_tiny_val"


def shapes_config(arch):
    return os.path.join(REPO_ROOT, "configs", "shapes", f"{arch}_rsb_r50_fpn_shapes.py")


def yacs_shapes_config(arch):
    return os.path.join(REPO_ROOT, "configs", "yacs", "shapes", f"{arch}_rsb_r50_fpn_shapes.yaml")


def coco_config(arch):
    return os.path.join(REPO_ROOT, "configs", "COCO", f"{arch}_rsb_r50_fpn_1x.py")


# The same model in both config systems: ResNet-18 trunk, small test resize.
LAZY_OVERRIDES = [
    f"model.backbone.bottom_up.model_name={TRUNK}",
    f"dataloader.test.mapper.augmentations.0.short_edge_length={MIN_SIZE}",
    f"dataloader.test.mapper.augmentations.0.max_size={MAX_SIZE}",
]
# Inference caps for CPU time: 100 RPN proposals (COCO: 1000), 10 detections per image (100).
# "+" adds keys the configs leave at the class defaults.
_RCNN_CAPS = ["model.proposal_generator.post_nms_topk=[1000,100]"]
LAZY_CAPS = {
    "faster_rcnn": _RCNN_CAPS + ["+model.roi_heads.box_predictor.test_topk_per_image=10"],
    "mask_rcnn": _RCNN_CAPS + ["+model.roi_heads.box_predictor.test_topk_per_image=10"],
    "cascade_mask_rcnn": _RCNN_CAPS
    + [f"+model.roi_heads.box_predictors.{stage}.test_topk_per_image=10" for stage in range(3)],
    "retinanet": ["+model.test_topk_candidates=100", "+model.max_detections_per_image=10"],
}
YACS_OPTS = [
    "MODEL.RSB.MODEL_NAME", TRUNK,
    "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
    "MODEL.RETINANET.TOPK_CANDIDATES_TEST", "100",
    "TEST.DETECTIONS_PER_IMAGE", "10",
]  # fmt: skip


def yacs_cfg(arch, checkpoint, score_threshold=0.0, **kwargs):
    return get_rsb_cfg(
        arch,
        checkpoint=checkpoint,
        device="cpu",
        score_threshold=score_threshold,
        num_classes=3,
        min_size_test=MIN_SIZE,
        max_size_test=MAX_SIZE,
        test_dataset="rsb_shapes_val",
        **{"opts": YACS_OPTS, **kwargs},
    )


def lazy_predictor(arch, checkpoint, score_threshold=0.0, extra_overrides=(), **kwargs):
    return LazyConfigPredictor(
        shapes_config(arch),
        checkpoint,
        device="cpu",
        score_threshold=score_threshold,
        overrides=LAZY_OVERRIDES + LAZY_CAPS[arch] + list(extra_overrides),
        **kwargs,
    )


# --- fixtures: tiny data, checkpoints from train_net.py ----------------------------------------


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """2 train and 2 val generated images (non-square, 112-175 px), registered in this process."""
    root = tmp_path_factory.mktemp("inference_data") / "shapes"
    paths = generate_shapes_dataset(str(root), num_train=2, num_val=2, min_size=112, max_size=176, seed=3)
    register_coco_instances_checked(TRAIN_NAME, paths["train"]["json_file"], paths["train"]["image_root"])
    register_coco_instances_checked(VAL_NAME, paths["val"]["json_file"], paths["val"]["image_root"])
    return paths


def _register_args(paths):
    return [
        "--register-coco", f"{TRAIN_NAME}={paths['train']['json_file']}:{paths['train']['image_root']}",
        "--register-coco", f"{VAL_NAME}={paths['val']['json_file']}:{paths['val']['image_root']}",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def checkpoints(trained_detectors):
    """arch -> model_final.pth of the session's shared train_net.py runs (tests/trained_detectors.py:
    ResNet-18 trunk, 3 iterations)."""
    return {arch: trained_detectors[arch].checkpoint for arch in ARCHS}


@pytest.fixture(scope="session")
def val_images(tiny_data):
    root = tiny_data["val"]["image_root"]
    return [cv2.imread(os.path.join(root, name)) for name in sorted(os.listdir(root))]


# --- yacs configs mirror the LazyConfigs -------------------------------------------------------


def _plain(value):
    if isinstance(value, ListConfig):
        value = OmegaConf.to_container(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() <= 16:
        return value.tolist()
    return value


def _is_setting(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, list) and all(_is_setting(v) for v in value)


def _settings(model):
    """Every plain attribute (numbers, strings, lists of them) of every submodule, and of the
    helper objects they hold (box transforms, matchers, anchor generators' settings): the
    model's hyperparameters, keyed by where they live."""
    found = {}

    def is_helper(value):
        return hasattr(value, "__dict__") and not isinstance(
            value, (torch.nn.Module, type, types.FunctionType, types.MethodType)
        )

    def add(prefix, obj, depth):
        for key, value in vars(obj).items():
            if key == "training":
                continue
            value = _plain(value)
            if _is_setting(value):
                found[f"{prefix}.{key}"] = value
            elif depth and is_helper(value):
                add(f"{prefix}.{key}", value, depth - 1)
            elif depth and isinstance(value, list):
                for i, item in enumerate(value):
                    if is_helper(item):
                        add(f"{prefix}.{key}[{i}]", item, depth - 1)

    for name, module in model.named_modules():
        add(name or "model", module, depth=2)
    return found


@pytest.mark.parametrize("arch", ARCHS)
def test_yacs_config_builds_the_lazy_config_model(arch):
    """Same parameter names, shapes and trainability, and the same hyperparameters."""
    yacs_model = build_model(get_rsb_cfg(arch, score_threshold=0.05))
    lazy_cfg = load_config_with_overrides(coco_config(arch), [])
    lazy_cfg.model.backbone.bottom_up.weights = None  # no download; weights do not change shapes
    lazy_model = instantiate(lazy_cfg.model)

    def signature(model):
        params = {k: p.requires_grad for k, p in model.named_parameters()}
        return [(k, tuple(v.shape), params.get(k)) for k, v in model.state_dict().items()]

    assert signature(yacs_model) == signature(lazy_model)
    yacs_settings, lazy_settings = _settings(yacs_model), _settings(lazy_model)
    assert len(yacs_settings) > 500  # the walk reaches the heads, not only the top module
    differences = {
        k: (yacs_settings.get(k), lazy_settings.get(k))
        for k in set(yacs_settings) | set(lazy_settings)
        if yacs_settings.get(k, "absent") != lazy_settings.get(k, "absent")
    }
    assert not differences, f"yacs vs LazyConfig: {differences}"


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_yacs_configs_follow_the_shapes_lazy_configs(arch):
    """configs/yacs/shapes/* take sizes, classes and data sets from configs/shapes/*."""
    lazy = load_config_with_overrides(shapes_config(arch), [])
    cfg = load_yacs_config(yacs_shapes_config(arch))
    train_resize = lazy.dataloader.train.mapper.augmentations[0]
    test_resize = lazy.dataloader.test.mapper.augmentations[0]
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(train_resize.short_edge_length)
    assert cfg.INPUT.MAX_SIZE_TRAIN == train_resize.max_size
    assert cfg.INPUT.MIN_SIZE_TEST == test_resize.short_edge_length
    assert cfg.INPUT.MAX_SIZE_TEST == test_resize.max_size
    num_classes = lazy.model.num_classes if arch == "retinanet" else lazy.model.roi_heads.num_classes
    head = cfg.MODEL.RETINANET if arch == "retinanet" else cfg.MODEL.ROI_HEADS
    assert head.NUM_CLASSES == num_classes == 3
    assert cfg.DATASETS.TRAIN == (lazy.dataloader.train.dataset.names,)
    assert cfg.DATASETS.TEST == (lazy.dataloader.test.dataset.names,)
    assert cfg.MODEL.MASK_ON == ("mask" in arch)


def test_yacs_configs_take_input_statistics_from_timm():
    pixel = pixel_normalization("resnet50.a1_in1k")
    for arch in ARCHS:
        cfg = get_rsb_cfg(arch)
        assert cfg.INPUT.FORMAT == pixel["input_format"] == "RGB"
        assert list(cfg.MODEL.PIXEL_MEAN) == pixel["pixel_mean"]
        assert list(cfg.MODEL.PIXEL_STD) == pixel["pixel_std"]
        assert cfg.MODEL.ANCHOR_GENERATOR.OFFSET == 0.0
    assert get_rsb_cfg("retinanet").MODEL.RSB.RELU_BEFORE_P7 is False


def test_get_rsb_cfg_sets_the_keys_of_its_architecture():
    cfg = get_rsb_cfg("retinanet", score_threshold=0.3, num_classes=3, min_size_test=192, max_size_test=320)
    assert (cfg.MODEL.RETINANET.SCORE_THRESH_TEST, cfg.MODEL.RETINANET.NUM_CLASSES) == (0.3, 3)
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (192, 320)
    cfg = get_rsb_cfg("mask_rcnn", checkpoint="m.pth", score_threshold=0.7, num_classes=3, test_dataset="x")
    assert (cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, cfg.MODEL.ROI_HEADS.NUM_CLASSES) == (0.7, 3)
    assert (cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE, cfg.DATASETS.TEST) == ("m.pth", "cpu", ("x",))
    cfg = get_rsb_cfg("faster_rcnn", opts=["MODEL.RSB.MODEL_NAME=resnet18", "INPUT.MAX_SIZE_TEST", "500"])
    assert (cfg.MODEL.RSB.MODEL_NAME, cfg.INPUT.MAX_SIZE_TEST, cfg.MODEL.MASK_ON) == ("resnet18", 500, False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(arch="mask_rcnn_x"), "arch='mask_rcnn_x': expected one of faster_rcnn, mask_rcnn"),
        (dict(arch="mask_rcnn", score_threshold=1.5), "score_threshold=1.5"),
        (dict(arch="mask_rcnn", num_classes=0), "num_classes=0"),
        (dict(arch="mask_rcnn", device="tpu"), "device='tpu'"),
        (dict(arch="mask_rcnn", opts=["MODEL.WEIGHTS"]), "'MODEL.WEIGHTS' has no value"),
    ],
)
def test_get_rsb_cfg_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_rsb_cfg(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on CPU-only machines")
def test_get_rsb_cfg_refuses_cuda_without_gpu():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        get_rsb_cfg("mask_rcnn", device="cuda")


def test_config_file_kind(tmp_path):
    assert config_file_kind(shapes_config("mask_rcnn")) == LAZY
    assert config_file_kind(yacs_config_file("retinanet")) == YACS
    saved = tmp_path / "config.yaml"  # what train_net.py saves next to its checkpoints
    saved.write_text("model:\n  _target_: detectron2.modeling.GeneralizedRCNN\ntrain:\n  max_iter: 2\n")
    assert config_file_kind(str(saved)) == LAZY
    tagged = tmp_path / "old.yaml"  # Detectron2's own Base-RetinaNet.yaml style
    tagged.write_text('MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: !!python/object/apply:eval ["[[32]]"]\n')
    assert config_file_kind(str(tagged)) == YACS
    other = tmp_path / "other.yaml"
    other.write_text("just: data\n")
    with pytest.raises(ValueError, match="neither a yacs config"):
        config_file_kind(str(other))
    with pytest.raises(FileNotFoundError, match="missing.py"):
        config_file_kind(str(tmp_path / "missing.py"))
    notes = tmp_path / "notes.txt"
    notes.write_text("model: x\n")
    with pytest.raises(ValueError, match="notes.txt.*expected a LazyConfig"):
        config_file_kind(str(notes))
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="broken.yaml' is not valid YAML"):
        config_file_kind(str(broken))


def test_prediction_inputs_expand_folders_and_patterns_and_name_what_they_cannot_use(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("b.jpg", "a.PNG", "notes.txt"):
        (folder / name).write_bytes(b"")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    images, videos = collect_inputs([str(folder), str(video), str(folder / "*.jpg")])
    assert images == [str(folder / "a.PNG"), str(folder / "b.jpg"), str(folder / "b.jpg")]  # in input order
    assert videos == [str(video)]
    (tmp_path / "empty").mkdir()
    for spec, error, message in (
        (tmp_path / "empty", ValueError, "empty: the folder has no .jpg"),
        (folder / "notes.txt", ValueError, "notes.txt: expected an image"),
        (tmp_path / "*.bmp", ValueError, "the pattern matches no images"),
        (tmp_path / "missing.jpg", FileNotFoundError, "missing.jpg: no such file or folder"),
    ):
        with pytest.raises(error, match=message):
            collect_inputs([str(images[0]), str(spec)])

    coco = tmp_path / "instances.json"  # results name COCO image ids: matched by file name
    coco.write_text(json.dumps({"images": [{"id": 7, "file_name": "val/a.PNG"}, {"id": 9, "file_name": "b.jpg"}]}))
    assert coco_image_ids(str(coco)) == {"a.PNG": 7, "b.jpg": 9}
    coco.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="instances.json: no 'images' list"):
        coco_image_ids(str(coco))
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "x/a.jpg"}, {"id": 2, "file_name": "y/a.jpg"}]}))
    with pytest.raises(ValueError, match="two images are named a.jpg"):
        coco_image_ids(str(coco))


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    """Detectron2's checkpointer only logs missing keys; the predictors' loader refuses them."""
    faster = build_model(get_rsb_cfg("faster_rcnn", opts=YACS_OPTS))
    path = tmp_path / "faster.pth"
    torch.save({"model": faster.state_dict()}, path)
    mask = build_model(get_rsb_cfg("mask_rcnn", opts=YACS_OPTS))
    with pytest.raises(WeightFileError, match=r"faster\.pth: does not fit .* missing \[roi_heads\.mask_head"):
        load_detector_checkpoint(mask, str(path))
    four_classes = build_model(get_rsb_cfg("faster_rcnn", num_classes=4, opts=YACS_OPTS))
    with pytest.raises(WeightFileError, match=r"cls_score\.weight: \(81, 1024\) vs \(5, 1024\)"):
        load_detector_checkpoint(four_classes, str(path))
    load_detector_checkpoint(build_model(get_rsb_cfg("faster_rcnn", opts=YACS_OPTS)), str(path))


def test_lazy_config_predictor_loads_no_backbone_pretraining(tmp_path):
    """The COCO configs name the RSB hub weights; the detector checkpoint replaces them, so the
    predictor must not download them: its copy of the config has no backbone weights (without
    network access a download would raise)."""
    cfg = load_config_with_overrides(coco_config("faster_rcnn"), LAZY_OVERRIDES[:1])
    untrained = copy.deepcopy(cfg)
    untrained.model.backbone.bottom_up.weights = None
    path = tmp_path / "untrained.pth"
    torch.save({"model": instantiate(untrained.model).state_dict()}, path)
    predictor = LazyConfigPredictor(cfg, str(path), score_threshold=0.0)
    assert cfg.model.backbone.bottom_up.weights == "resnet50.a1_in1k"  # the caller's config is kept
    assert predictor.cfg.model.backbone.bottom_up.weights is None
    assert predictor.input_format == "RGB"
    assert predictor.metadata.name == "coco_2017_val"


# --- predictors on train_net.py checkpoints ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_default_predictor_and_lazy_config_predictor_agree(arch, checkpoints, val_images):
    checkpoint = checkpoints[arch]
    default = DefaultPredictor(yacs_cfg(arch, checkpoint))
    # Every key of the train_net.py checkpoint fits the yacs-built model, none missing or extra.
    load_detector_checkpoint(default.model, checkpoint)
    lazy = lazy_predictor(arch, checkpoint)
    assert default.metadata.thing_classes == lazy.metadata.thing_classes == ["circle", "square", "triangle"]
    for image in val_images[:1]:  # one non-square image; the next test takes two more shapes
        expected = lazy(image)["instances"]
        got = default(image)["instances"]
        assert len(expected) > 0, "no detections to compare"
        assert got.image_size == expected.image_size == image.shape[:2]
        assert len(got) == len(expected)
        torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor)
        torch.testing.assert_close(got.scores, expected.scores)
        assert torch.equal(got.pred_classes, expected.pred_classes)
        assert got.has("pred_masks") == expected.has("pred_masks") == ("mask" in arch)
        if got.has("pred_masks"):
            assert torch.equal(got.pred_masks, expected.pred_masks)


def _wide_and_tall(image):
    """A wide image whose long side the max size limits, and a tall one."""
    wide = np.ascontiguousarray(np.concatenate([image, image[:, ::-1]], axis=1)[:100])
    return [wide, np.ascontiguousarray(wide.transpose(1, 0, 2))]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["yacs", "lazy"])
def test_outputs_in_original_coordinates_from_bgr_input(kind, checkpoints, val_images):
    """The predictor converts BGR to the model's RGB, resizes, and maps outputs back."""
    checkpoint = checkpoints["mask_rcnn"]
    if kind == "yacs":
        predictor = DefaultPredictor(yacs_cfg("mask_rcnn", checkpoint))
    else:
        predictor = lazy_predictor("mask_rcnn", checkpoint)
    resize = T.ResizeShortestEdge(MIN_SIZE, MAX_SIZE)
    for image in _wide_and_tall(val_images[0]):
        height, width = image.shape[:2]
        instances = predictor(image)["instances"]
        assert len(instances) > 0
        assert instances.image_size == (height, width)
        assert instances.pred_masks.shape[1:] == (height, width)

        # The model by hand: RGB, resized, no output size given, so boxes in resized coordinates.
        rgb = image[:, :, ::-1]
        resized = resize.get_transform(rgb).apply_image(rgb)
        assert max(resized.shape[:2]) <= MAX_SIZE and resized.shape[:2] != image.shape[:2]
        with torch.no_grad():
            raw = predictor.model([{"image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))}])
        raw = raw[0]["instances"]
        scale = torch.tensor([width / resized.shape[1], height / resized.shape[0]] * 2)
        expected = raw.pred_boxes.tensor * scale
        expected[:, 0::2] = expected[:, 0::2].clamp(0, width)
        expected[:, 1::2] = expected[:, 1::2].clamp(0, height)
        torch.testing.assert_close(instances.pred_boxes.tensor, expected, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(instances.scores, raw.scores)

        # Channel order matters to the model: an RGB array passed as BGR gives other results.
        swapped = predictor(np.ascontiguousarray(image[:, :, ::-1]))["instances"]
        assert len(swapped) != len(instances) or not (
            torch.allclose(swapped.scores, instances.scores)
            and torch.allclose(swapped.pred_boxes.tensor, instances.pred_boxes.tensor)
        )


@pytest.mark.slow
def test_lazy_config_predictor_reads_train_net_config_yaml(checkpoints, val_images):
    """The config.yaml saved next to the checkpoint holds the trained settings (ResNet-18 ...)."""
    checkpoint = checkpoints["retinanet"]
    saved = os.path.join(os.path.dirname(checkpoint), "config.yaml")
    assert config_file_kind(saved) == LAZY
    # The same detection cap as lazy_predictor's (the training run saved the config's 100).
    predictor = LazyConfigPredictor(saved, checkpoint, score_threshold=0.0, overrides=["+model.max_detections_per_image=10"])
    expected = lazy_predictor("retinanet", checkpoint)(val_images[0])["instances"]
    got = predictor(val_images[0])["instances"]
    assert len(got) == len(expected) > 0
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor)


@pytest.mark.slow
def test_lazy_config_predictor_rejects_non_images(checkpoints):
    predictor = lazy_predictor("faster_rcnn", checkpoints["faster_rcnn"])
    with pytest.raises(ValueError, match=r"shape \(32, 32\); expected a \(H, W, 3\) BGR"):
        predictor(np.zeros((32, 32), np.uint8))


# --- the predictors in bfloat16 ----------------------------------------------------------------

TOP_BOXES = 3  # the float32 detections that bfloat16 must find again
MIN_TOP_BOX_IOU = 0.9
# The three-iteration detectors score their best boxes and proposals within 0.001 of each other
# (0.245, 0.244, 0.243), so which of two overlapping ones survives non-maximum suppression is a tie
# that any rounding breaks (measured: Faster R-CNN's RPN NMS keeps another proposal in bfloat16).
# The comparison keeps every box (no NMS in the RPN and the heads, up to 100 per image), and
# bfloat16 must compute the float32 top boxes again, wherever they rank.
_NO_NMS = 1.0
_LAZY_RPN_ALL = [f"model.proposal_generator.nms_thresh={_NO_NMS}"]
LAZY_ALL_BOXES = {
    "mask_rcnn": _LAZY_RPN_ALL
    + [f"+model.roi_heads.box_predictor.{key}" for key in (f"test_nms_thresh={_NO_NMS}", "test_topk_per_image=100")],
    "cascade_mask_rcnn": _LAZY_RPN_ALL
    + [
        f"+model.roi_heads.box_predictors.{stage}.{key}"
        for stage in range(3)
        for key in (f"test_nms_thresh={_NO_NMS}", "test_topk_per_image=100")
    ],
}
YACS_ALL_BOXES = [
    "MODEL.RPN.NMS_THRESH", str(_NO_NMS), "MODEL.ROI_HEADS.NMS_THRESH_TEST", str(_NO_NMS),
    "MODEL.RETINANET.NMS_THRESH_TEST", str(_NO_NMS), "TEST.DETECTIONS_PER_IMAGE", "100",
]  # fmt: skip


def _assert_bf16_finds_the_top_fp32_boxes(fp32, bf16):
    """Float32 outputs, and each of the top float32 boxes found in bfloat16 (same class, IoU > 0.9)."""
    assert bf16.pred_boxes.tensor.dtype == bf16.scores.dtype == torch.float32
    if bf16.has("pred_masks"):
        assert bf16.pred_masks.dtype == fp32.pred_masks.dtype
    assert len(fp32) > 0 and len(bf16) > 0, f"{len(fp32)} float32 and {len(bf16)} bfloat16 detections"
    same_class = fp32.pred_classes[:, None] == bf16.pred_classes[None, :]
    best_iou = (pairwise_iou(fp32.pred_boxes, bf16.pred_boxes) * same_class).max(dim=1).values
    for i in torch.argsort(fp32.scores, descending=True)[:TOP_BOXES].tolist():
        box = fp32.pred_boxes.tensor[i].tolist()
        assert best_iou[i] > MIN_TOP_BOX_IOU, f"float32 box {box}: best bfloat16 IoU {float(best_iou[i]):.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("arch, fuse", [("cascade_mask_rcnn", True)])
def test_lazy_config_predictor_in_bf16_finds_the_fp32_detections(arch, fuse, checkpoints, val_images):
    """The folded (deployment) form, whose convolutions carry the folded norms' scales; with masks.
    (The unfolded models in bf16: the training-step and --eval-only tests of test_mixed_precision.py.)"""
    extra = LAZY_ALL_BOXES[arch]
    fp32 = lazy_predictor(arch, checkpoints[arch], extra_overrides=extra, fuse=fuse)
    bf16 = lazy_predictor(arch, checkpoints[arch], extra_overrides=extra, fuse=fuse, precision="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.float32  # only the computations are bf16
    image = val_images[0]  # non-square
    _assert_bf16_finds_the_top_fp32_boxes(fp32(image)["instances"], bf16(image)["instances"])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["retinanet"])  # Faster R-CNN in bf16: the --eval-only test of test_mixed_precision.py
def test_default_predictor_in_bf16_finds_the_fp32_detections(arch, checkpoints, val_images):
    fp32 = build_default_predictor(yacs_cfg(arch, checkpoints[arch], opts=YACS_OPTS + YACS_ALL_BOXES))
    bf16 = build_default_predictor(yacs_cfg(arch, checkpoints[arch], opts=YACS_OPTS + YACS_ALL_BOXES, precision="bfloat16"))
    assert isinstance(bf16, DefaultPredictor) and bf16.cfg.TEST.PRECISION == "bfloat16"
    image = val_images[0]  # non-square
    _assert_bf16_finds_the_top_fp32_boxes(fp32(image)["instances"], bf16(image)["instances"])


def test_predictors_refuse_fp16_on_the_cpu_and_unknown_precisions():
    with pytest.raises(ValueError, match="precision=float16 needs a CUDA device, not 'cpu'"):
        LazyConfigPredictor(shapes_config("faster_rcnn"), "unused.pth", precision="float16")
    with pytest.raises(ValueError, match="TEST.PRECISION='half': expected one of float32, float16, bfloat16"):
        get_rsb_cfg("faster_rcnn", precision="half")
    with pytest.raises(ValueError, match="TEST.PRECISION=float16 needs a CUDA device"):
        build_default_predictor(get_rsb_cfg("faster_rcnn", checkpoint="unused.pth", precision="float16"))


# --- the demo and yacs evaluation --------------------------------------------------------------


def _load_demo():
    path = os.path.join(REPO_ROOT, "projects", "predict_demo", "predict.py")
    spec = importlib.util.spec_from_file_location("predict_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_demo_writes_pictures_and_coco_results(checkpoints, tiny_data, tmp_path):
    from pycocotools.coco import COCO

    demo = _load_demo()
    val = tiny_data["val"]
    out = tmp_path / "demo"
    demo.main(
        ["--config-file", shapes_config("mask_rcnn"), "--checkpoint", checkpoints["mask_rcnn"],
         "--input", val["image_root"], "--coco-json", val["json_file"], "--output", str(out),
         "--confidence-threshold", "0.0", "--device", "cpu", *LAZY_OVERRIDES, *LAZY_CAPS["mask_rcnn"]]
    )  # fmt: skip
    for name in sorted(os.listdir(val["image_root"])):
        picture = cv2.imread(str(out / name))
        assert picture is not None, f"no picture for {name}"
        assert picture.shape == cv2.imread(os.path.join(val["image_root"], name)).shape
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(val["json_file"])
        results = gt.loadRes(str(out / "predictions.json"))
    anns = results.loadAnns(results.getAnnIds())
    assert anns and all("segmentation" in a and a["area"] > 0 for a in anns)
    assert {a["category_id"] for a in anns} <= set(gt.getCatIds())
    assert {a["image_id"] for a in anns} <= set(gt.getImgIds())


def _write_video(path, frames):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, frames[0].shape[1::-1])
    for frame in frames:
        writer.write(frame)
    writer.release()


@pytest.mark.slow
def test_demo_annotates_a_video_through_a_yacs_config(checkpoints, val_images, tmp_path):
    demo = _load_demo()
    frame = np.ascontiguousarray(cv2.resize(val_images[0], (160, 120)))
    _write_video(tmp_path / "clip.mp4", [frame] * 3)
    out = tmp_path / "demo"
    demo.main(
        ["--config-file", yacs_shapes_config("faster_rcnn"),
         "--checkpoint", checkpoints["faster_rcnn"], "--input", str(tmp_path / "clip.mp4"),
         "--output", str(out), "--confidence-threshold", "0.0",
         *YACS_OPTS, "INPUT.MIN_SIZE_TEST", str(MIN_SIZE), "INPUT.MAX_SIZE_TEST", str(MAX_SIZE)]
    )  # fmt: skip
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 3
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (160, 120)
    capture.release()
    with open(out / "predictions.json") as f:
        results = json.load(f)
    assert {r["image_id"] for r in results} == {1, 2, 3}
    assert {r["category_id"] for r in results} <= {1, 2, 3}  # the shapes set's category ids


@pytest.mark.slow
def test_train_net_evaluates_through_a_yacs_config(checkpoints, tiny_data, tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "train_net.py"),
         "--config-file", yacs_shapes_config("mask_rcnn"),
         "--eval-only", *_register_args(tiny_data),
         f"MODEL.WEIGHTS={checkpoints['mask_rcnn']}", f"DATASETS.TEST=('{VAL_NAME}',)",
         f"OUTPUT_DIR={tmp_path}", "DATALOADER.NUM_WORKERS", "0",
         *YACS_OPTS, "INPUT.MIN_SIZE_TEST", str(MIN_SIZE), "INPUT.MAX_SIZE_TEST", str(MAX_SIZE),
         "TEST.PRECISION", "bfloat16"],  # bfloat16 detections must reach the evaluator as float32
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    with open(tmp_path / "eval_results.json") as f:
        results = json.load(f)
    assert set(results) == {"bbox", "segm"}
    assert 0.0 <= results["bbox"]["AP"] <= 100.0


def test_train_net_refuses_to_train_from_a_yacs_config(tmp_path):
    sys.path.insert(0, REPO_ROOT)
    import train_net

    args = train_net.build_argument_parser().parse_args(["--config-file", yacs_config_file("faster_rcnn")])
    with pytest.raises(ValueError, match=r"yacs config, which is for evaluation only \(--eval-only\)"):
        train_net.setup_config(args)
