"""mmdetection's training-time behaviour, option by option, on cases whose values follow by hand
from mmdetection's formulas (MaxIoUAssigner, AnchorGenerator.valid_flags, AnchorHead.get_targets,
CocoDataset._filter_imgs, mmcv's initialisers)."""

import math
import os

import pytest
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from conftest import REPO_ROOT
from rsb_backbone.data.image_size_filter import drop_small_images, get_detection_dataset_dicts_min_size
from rsb_backbone.modeling import MMDetMatcher, anchors_on_image
from rsb_backbone.checkpoint.tensor_files import WeightFileError, load_tensor_file
from rsb_backbone.modeling.backbone.timm_weights import resolve_weights_file
from trained_detectors import MAX_ITER
from train_net_runner import read_metrics

RPN_MATCHER = dict(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True)
MMDET_CONFIGS = ["faster_rcnn", "mask_rcnn", "cascade_mask_rcnn", "retinanet"]


def _mmdet_config(detector):
    return os.path.join(REPO_ROOT, "configs", "COCO", f"{detector}_rsb_r50_fpn_1x_mmdet.py")


def _small_model(detector):
    """The `_mmdet` config's model with a ResNet-18 trunk and no backbone download."""
    cfg = LazyConfig.load(_mmdet_config(detector))
    cfg.model.backbone.bottom_up.model_name = "resnet18"
    cfg.model.backbone.bottom_up.weights = None
    return cfg, instantiate(cfg.model)


# ---- MMDetMatcher: MaxIoUAssigner's low-quality matches ------------------------------------------
def test_low_quality_match_needs_min_iou_and_goes_to_the_last_claiming_ground_truth():
    iou = torch.tensor(
        [
            [0.80, 0.25, 0.10, 0.00],  # gt0: best 0.80 at p0
            [0.60, 0.20, 0.28, 0.35],  # gt1: best 0.60 at p0 too -> p0 re-assigned to gt1 (later wins)
            [0.00, 0.00, 0.25, 0.00],  # gt2: best 0.25 < min_pos_iou 0.3 -> claims nothing
        ]
    )
    matches, labels = MMDetMatcher(**RPN_MATCHER, min_low_quality_iou=0.3)(iou)
    # by thresholds: p0 0.80 pos, p1 0.25 neg, p2 0.28 neg, p3 0.35 ignored
    assert matches.tolist()[0] == 1 and matches.tolist()[3] == 1
    assert labels.tolist() == [1, 0, 0, -1]
    # Detectron2's Matcher: any IoU (p2 becomes positive via gt2's 0.25), no re-assignment
    from detectron2.modeling.matcher import Matcher

    d2_matches, d2_labels = Matcher(**RPN_MATCHER)(iou)
    assert d2_matches.tolist()[0] == 0 and d2_labels.tolist() == [1, 0, 1, -1]


def test_low_quality_ties_are_all_claimed():
    iou = torch.tensor([[0.40, 0.40, 0.10], [0.05, 0.00, 0.20]])
    matches, labels = MMDetMatcher(**RPN_MATCHER, min_low_quality_iou=0.3)(iou)
    assert labels.tolist() == [1, 1, 0]  # both 0.40 predictions; gt1's 0.20 is under 0.3
    assert matches.tolist()[:2] == [0, 0]


def test_appended_ground_truth_is_left_out_of_low_quality_matching():
    # 3 proposals, then the 2 ground-truth boxes appended as proposals (Detectron2's order)
    iou = torch.tensor(
        [
            [0.70, 0.55, 0.10, 1.00, 0.00],
            [0.65, 0.20, 0.52, 0.00, 1.00],
        ]
    )
    matcher = MMDetMatcher([0.5], [0, 1], True, min_low_quality_iou=0.5, appended_ground_truth=True)
    matches, labels = matcher(iou)
    # gt1's best real proposal is p0 (0.65): p0 goes to gt1 although gt0 overlaps it more
    assert matches.tolist() == [1, 0, 1, 0, 1]
    assert labels.tolist() == [1, 1, 1, 1, 1]
    # counting the appended boxes, each gt's best "proposal" is its own box: p0 stays with gt0
    matches_with_gt, _ = MMDetMatcher([0.5], [0, 1], True, min_low_quality_iou=0.5)(iou)
    assert matches_with_gt.tolist()[0] == 0


def test_duplicate_ground_truth_boxes_are_each_assigned_to_themselves():
    iou = torch.tensor([[0.6, 1.0, 1.0], [0.6, 1.0, 1.0]])  # gt0 == gt1; one proposal + 2 appended
    matches, labels = MMDetMatcher([0.5], [0, 1], appended_ground_truth=True)(iou)
    assert matches.tolist()[1:] == [0, 1] and labels.tolist() == [1, 1, 1]


def test_no_ground_truth_gives_negatives():
    matches, labels = MMDetMatcher(**RPN_MATCHER, min_low_quality_iou=0.3)(torch.zeros(0, 4))
    assert labels.tolist() == [0, 0, 0, 0]


# ---- padding anchors: AnchorGenerator.valid_flags ----------------------------------------------
def test_anchors_on_image_follow_the_per_image_padded_shape():
    generator = DefaultAnchorGenerator(sizes=[[32], [64]], aspect_ratios=[[1.0]], strides=[32, 64], offset=0.0)
    # batch padded to 64 x 160; features 2x5 at stride 32 and 1x3 at stride 64 (ceil)
    features = [torch.zeros(1, 1, 2, 5), torch.zeros(1, 1, 1, 3)]
    anchors = generator(features)
    # image 40 x 70 -> padded to 64 x 96: stride 32 valid columns ceil(96/32)=3 of 5, rows 2 of 2;
    # stride 64 valid columns ceil(96/64)=2 of 3
    mask = anchors_on_image(anchors, generator.strides, generator.offset, (40, 70))
    expected_level0 = [c < 3 for r in range(2) for c in range(5)]
    expected_level1 = [c < 2 for c in range(3)]
    assert mask.tolist() == expected_level0 + expected_level1


def test_anchors_on_image_with_several_anchors_per_position_and_offset():
    generator = DefaultAnchorGenerator(sizes=[[16, 32]], aspect_ratios=[[0.5, 1.0]], strides=[8], offset=0.5)
    anchors = generator([torch.zeros(1, 1, 3, 4)])  # 3 rows x 4 columns x 4 anchors
    mask = anchors_on_image(anchors, generator.strides, generator.offset, (10, 20), size_divisibility=8)
    # padded to 16 x 24 -> rows ceil(16/8)=2, columns ceil(24/8)=3 valid
    expected = [r < 2 and c < 3 for r in range(3) for c in range(4) for _ in range(4)]
    assert mask.tolist() == expected


# ---- RPN: padding anchors ignored, losses / sampled anchors ------------------------------------
def _rpn_case(rpn):
    """Two images, 6 anchors each: image 0 has 1 positive + 2 negatives, image 1 nothing sampled."""
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 6))]
    gt_labels = [torch.tensor([1, 0, 0, -1, -1, -1]), torch.full((6,), -1)]
    gt_boxes = [torch.tensor([[1.0, 0.0, 11.0, 10.0]] * 6), torch.zeros(6, 4)]  # dx = 1/10
    logits = [torch.zeros(2, 6)]  # BCE with logits 0 = ln 2 per sampled anchor
    deltas = [torch.zeros(2, 6, 4)]
    with EventStorage():
        return rpn.losses(anchors, logits, gt_labels, deltas, gt_boxes)


def test_rpn_losses_are_divided_by_the_sampled_anchors():
    cfg = LazyConfig.load(_mmdet_config("mask_rcnn"))
    rpn = instantiate(cfg.model.proposal_generator)
    losses = _rpn_case(rpn)
    # mmdet: num_total_pos + num_total_neg, each image at least 1 of each: (1 + 2) + (1 + 1) = 5
    assert losses["loss_rpn_cls"].item() == pytest.approx(3 * math.log(2) / 5, rel=1e-5)
    assert losses["loss_rpn_loc"].item() == pytest.approx(0.1 / 5, rel=1e-5)
    rpn.normalize_by_sampled_anchors = False  # Detectron2: 256 per image
    losses = _rpn_case(rpn)
    assert losses["loss_rpn_cls"].item() == pytest.approx(3 * math.log(2) / 512, rel=1e-5)


def test_rpn_ignores_padding_anchors_and_matches_only_the_others():
    cfg = LazyConfig.load(_mmdet_config("mask_rcnn"))
    cfg.model.proposal_generator.batch_size_per_image = 100000  # keep every label: no subsampling
    rpn = instantiate(cfg.model.proposal_generator)
    features = [torch.zeros(1, 256, 160 // s, 160 // s) for s in (4, 8, 16, 32, 64)]  # not 160/64
    features[-1] = torch.zeros(1, 256, 3, 3)
    anchors = rpn.anchor_generator(features)
    small = Instances((40, 40), gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 30.0, 30.0]])))
    labels, _ = rpn.label_and_sample_anchors(anchors, [small])
    valid = anchors_on_image(anchors, [4, 8, 16, 32, 64], 0.0, (40, 40))
    # hand count: padded 64 x 64 -> 16x16, 8x8, 4x4, 2x2, 1x1 positions of 3 anchors each
    assert int(valid.sum()) == 3 * (256 + 64 + 16 + 4 + 1)
    assert (labels[0][~valid] == -1).all()
    assert (labels[0][valid] >= 0).any() and (labels[0][valid] == 1).any()


# ---- RetinaNet: padding anchors ignored, losses / batch positives ------------------------------
def _retinanet_losses(model):
    """2 images x 3 anchors, 2 classes: image 0 = positive (class 0), background, ignored;
    image 1 = 3 background anchors. Logits 0: each focal term is alpha_t * 0.5**2 * ln 2."""
    model.num_classes = 2
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3))]
    gt_labels = [torch.tensor([0, 2, -1]), torch.tensor([2, 2, 2])]
    gt_boxes = [torch.tensor([[1.0, 0.0, 11.0, 10.0]] * 3), torch.zeros(3, 4)]
    with EventStorage():
        return model.losses(anchors, [torch.zeros(2, 3, 2)], gt_labels, [torch.zeros(2, 3, 4)], gt_boxes)


def test_retinanet_losses_are_divided_by_the_batch_positives():
    _, model = _small_model("retinanet")
    # focal sum: positive anchor 0.25 + 0.75, four background anchors 2 x 0.75 each -> 7 x 0.25 ln 2
    focal_sum = 7 * 0.25 * math.log(2)
    losses = _retinanet_losses(model)
    # mmdet: sum over images of max(num_pos, 1) = 1 + 1 = 2
    assert losses["loss_cls"].item() == pytest.approx(focal_sum / 2, rel=1e-5)
    assert losses["loss_box_reg"].item() == pytest.approx(0.1 / 2, rel=1e-5)  # L1 of dx = 0.1
    _, model = _small_model("retinanet")
    model.normalize_by_batch_positives = False  # Detectron2: moving average 0.9 x 100 + 0.1 x 1
    assert _retinanet_losses(model)["loss_cls"].item() == pytest.approx(focal_sum / 90.1, rel=1e-5)


def test_retinanet_labels_padding_anchors_ignored():
    _, model = _small_model("retinanet")
    features = [torch.zeros(1, 256, 192 // s, 192 // s) for s in (8, 16, 32, 64, 128)]
    anchors = model.anchor_generator(features)
    empty = Instances((100, 60), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))
    labels, _ = model.label_anchors(anchors, [empty])
    valid = anchors_on_image(anchors, model.anchor_generator.strides, 0.0, (100, 60))
    assert (labels[0][~valid] == -1).all() and (labels[0][valid] == model.num_classes).all()
    model.ignore_padding_anchors = False
    labels, _ = model.label_anchors(anchors, [empty])
    assert (labels[0] == model.num_classes).all()  # Detectron2: padding anchors are negatives


# ---- initialisation -----------------------------------------------------------------------------
def test_mmdet_initialisation_of_fpn_box_head_and_mask_logits():
    torch.manual_seed(0)
    _, model = _small_model("mask_rcnn")
    lateral = model.backbone.fpn_lateral5.weight  # 1x1, 512 -> 256 (ResNet-18 C5)
    assert lateral.std().item() == pytest.approx(math.sqrt(2 / (512 + 256)), rel=0.03)  # Xavier
    fc1 = model.roi_heads.box_head.fc1.weight  # 12544 -> 1024
    assert fc1.std().item() == pytest.approx(math.sqrt(2 / (256 * 7 * 7 + 1024)), rel=0.03)
    predictor = model.roi_heads.mask_head.predictor.weight  # Kaiming-normal, fan_out = classes
    num_classes = predictor.shape[0]
    assert predictor.std().item() == pytest.approx(math.sqrt(2 / num_classes), rel=0.15)
    # the plain config keeps Detectron2's: c2_xavier_fill (std sqrt(1 / fan_in)), normal(0.001)
    cfg = LazyConfig.load(os.path.join(REPO_ROOT, "configs", "COCO", "mask_rcnn_rsb_r50_fpn_1x.py"))
    cfg.model.backbone.bottom_up.model_name = "resnet18"
    cfg.model.backbone.bottom_up.weights = None
    plain = instantiate(cfg.model)
    assert plain.backbone.fpn_lateral5.weight.std().item() == pytest.approx(math.sqrt(1 / 512), rel=0.03)
    assert plain.roi_heads.mask_head.predictor.weight.std().item() == pytest.approx(0.001, rel=0.15)


# ---- data: images with a side under 32 px ---------------------------------------------------------
def test_small_images_are_dropped_like_mmdetection():
    dicts = [{"width": w, "height": h, "image_id": i} for i, (w, h) in enumerate([(31, 500), (32, 32), (640, 20), (33, 400)])]
    assert [d["image_id"] for d in drop_small_images(dicts, 32)] == [1, 3]


def test_mmdet_configs_filter_the_training_set_by_size(tiny_shapes):
    from detectron2.data.datasets import register_coco_instances

    register_coco_instances("mmdet_filter_train", {}, tiny_shapes["train"]["json_file"], tiny_shapes["train"]["image_root"])
    cfg = LazyConfig.load(_mmdet_config("mask_rcnn"))
    assert cfg.dataloader.train.dataset.min_size == 32
    cfg.dataloader.train.dataset.names = "mmdet_filter_train"
    everything = instantiate(cfg.dataloader.train.dataset)
    smallest = min(min(d["width"], d["height"]) for d in everything)
    cfg.dataloader.train.dataset.min_size = smallest + 1
    kept = instantiate(cfg.dataloader.train.dataset)
    assert len(kept) == len([d for d in everything if min(d["width"], d["height"]) > smallest]) < len(everything)
    assert get_detection_dataset_dicts_min_size("mmdet_filter_train", min_size=0) == everything


def test_weights_address_is_downloaded_once_with_its_hash_checked(tmp_path, monkeypatch):
    import functools
    import hashlib
    import http.server
    import threading

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    served = tmp_path / "served"
    served.mkdir()
    torch.save({"state_dict": {"backbone.conv1.weight": torch.arange(4.0)}}, served / "w.pth")
    data = (served / "w.pth").read_bytes()
    good = f"rsb-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (served / good).write_bytes(data)
    (served / "rsb-00000000.pth").write_bytes(data)  # the name's hash prefix does not match
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}/"
        path = resolve_weights_file(base + good)
        assert path == str(tmp_path / "torch" / "hub" / "checkpoints" / good)
        assert torch.equal(load_tensor_file(path)["state_dict"]["backbone.conv1.weight"], torch.arange(4.0))
        (served / good).unlink()  # the second time, the cached copy is used
        assert resolve_weights_file(base + good) == path
        with pytest.raises(WeightFileError, match=r"rsb-00000000\.pth.*invalid hash value"):
            resolve_weights_file(base + "rsb-00000000.pth")
        assert not (tmp_path / "torch" / "hub" / "checkpoints" / "rsb-00000000.pth").exists()
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_weights_address_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightFileError) as error:
        resolve_weights_file("https://download.openmmlab.invalid/resnet50-20e21305.pth")
    message = str(error.value)
    assert "\n" not in message and "download.openmmlab.invalid" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-20e21305.pth") in message
    assert not (tmp_path / "hub" / "checkpoints" / "resnet50-20e21305.pth").exists()


# ---- every `_mmdet` config trains ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("detector", MMDET_CONFIGS)
def test_mmdet_config_trains(detector, trained_detectors):
    # The session's shared train_net.py run of the config (tests/trained_detectors.py).
    records = [r for r in read_metrics(trained_detectors[f"{detector}_mmdet"].output_dir) if "total_loss" in r]
    assert [r["iteration"] for r in records] == list(range(MAX_ITER))
    assert all(math.isfinite(r["total_loss"]) for r in records)
