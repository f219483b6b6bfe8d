"""The model zoo beyond the seed (docs/model_zoo.md): the R-101 and R-152 1x configs and the 3x
multi-scale configs of all three trunks build, differ from their parents only where they say so,
train through ``train_net.py``, and ``projects/model_zoo/model_zoo_table.py`` counts them."""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch
from omegaconf import OmegaConf

from detectron2.config import LazyConfig, instantiate

from conftest import REPO_ROOT
from rsb_backbone import pixel_normalization
from rsb_backbone.config import get_rsb_cfg, load_config_with_overrides
from rsb_backbone.config.yacs_configs import TRUNK_WEIGHTS
from train_net_runner import dataset_args, read_metrics, run_train_net_mains

COCO = os.path.join(REPO_ROOT, "configs", "COCO")
DETECTORS = ("faster_rcnn", "mask_rcnn", "cascade_mask_rcnn", "retinanet")
DEPTHS = (50, 101, 152)
WEIGHTS = {101: "resnet101.a1h_in1k", 152: "resnet152.a1h_in1k"}
NO_WEIGHTS = ["model.backbone.bottom_up.weights=None"]

ITERS_PER_EPOCH = 7330  # configs/common/rsb_base.py
MAX_ITER_3X = 36 * ITERS_PER_EPOCH
SHORT_EDGES_3X = [640, 672, 704, 736, 768, 800]


def config_path(detector: str, depth: int, schedule: str) -> str:
    return os.path.join(COCO, f"{detector}_rsb_r{depth}_fpn_{schedule}.py")


def parent_of(detector: str, depth: int, schedule: str) -> str:
    """A 3x config's parent is its 1x; an R-101/R-152 1x config's is the R-50 1x."""
    return config_path(detector, depth, "1x") if schedule == "3x" else config_path(detector, 50, "1x")


# (detector, depth, schedule) of the 20 configs beyond the four R-50 1x ones
NEW_CONFIGS = [
    (detector, depth, schedule)
    for detector in DETECTORS
    for depth in DEPTHS
    for schedule in ("1x", "3x")
    if (depth, schedule) != (50, "1x")
]
IDS = [f"{d}_r{depth}_{s}" for d, depth, s in NEW_CONFIGS]

# Keys (dotted, as prefixes) that each kind of config may change relative to its parent.
TRUNK_KEYS = (
    "model.backbone.bottom_up.model_name",
    "model.backbone.bottom_up.weights",
    "model.pixel_mean",
    "model.pixel_std",
)
SCHEDULE_3X_KEYS = (
    "train.max_iter",
    "lr_multiplier.scheduler.milestones",
    "lr_multiplier.warmup_length",
    "dataloader.train.mapper.augmentations.0.short_edge_length",
)


def flatten(node, prefix: str = "") -> dict:
    """Dotted key -> leaf value of a plain container tree (lists indexed by position)."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, (list, tuple)):
        items = enumerate(node)
    else:
        return {prefix: node}
    flat = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_tree(path: str) -> dict:
    """The whole loaded config, interpolations unresolved, as dotted keys."""
    return flatten(OmegaConf.to_container(LazyConfig.load(path), resolve=False))


def changed_keys(path: str, parent: str) -> set:
    new, old = config_tree(path), config_tree(parent)
    missing = object()
    return {key for key in new.keys() | old.keys() if new.get(key, missing) != old.get(key, missing)}


# ---- each config loads and builds ----------------------------------------------------------------
_BUILT = {}  # model subtree -> built model: a 3x config builds the same model as its 1x


def build(path: str) -> torch.nn.Module:
    """The config's model without pretrained weights, built once per distinct model."""
    cfg = load_config_with_overrides(path, NO_WEIGHTS)
    key = repr(OmegaConf.to_container(cfg.model, resolve=True))
    if key not in _BUILT:
        _BUILT[key] = instantiate(cfg.model).eval()
    return _BUILT[key]


@pytest.mark.parametrize("detector, depth, schedule", NEW_CONFIGS, ids=IDS)
def test_a_new_config_loads_and_builds_its_trunk(detector, depth, schedule):
    path = config_path(detector, depth, schedule)
    assert set(LazyConfig.load(path).keys()) == {"dataloader", "lr_multiplier", "model", "optimizer", "train"}
    model = build(path)
    trunk = model.backbone.bottom_up
    blocks = {50: 6, 101: 23, 152: 36}[depth]  # ResNet-50/101/152: 6/23/36 blocks in res4
    assert len(trunk.layer3) == blocks
    assert trunk.output_shape()["res5"].channels == 2048
    if detector == "retinanet":  # P6 reads C5: its width follows the trunk
        assert model.backbone.top_block.p6.in_channels == 2048
    weights = WEIGHTS.get(depth, "resnet50.a1_in1k")
    pixel = pixel_normalization(weights)
    assert model.pixel_mean.flatten().tolist() == pytest.approx(pixel["pixel_mean"])
    assert model.pixel_std.flatten().tolist() == pytest.approx(pixel["pixel_std"])
    assert LazyConfig.load(path).model.backbone.bottom_up.weights == weights


# ---- each config is its parent plus the declared changes ---------------------------------------
@pytest.mark.parametrize("detector, depth, schedule", NEW_CONFIGS, ids=IDS)
def test_a_new_config_changes_only_what_it_declares(detector, depth, schedule):
    path, parent = config_path(detector, depth, schedule), parent_of(detector, depth, schedule)
    declared = SCHEDULE_3X_KEYS if schedule == "3x" else TRUNK_KEYS
    changed = changed_keys(path, parent)
    undeclared = sorted(key for key in changed if not key.startswith(declared))
    assert undeclared == [], f"{os.path.basename(path)} changes {undeclared} of {os.path.basename(parent)}"
    required = ("train.max_iter", "dataloader.train.mapper.augmentations.0.short_edge_length.0")
    if schedule == "1x":
        required = ("model.backbone.bottom_up.model_name", "model.backbone.bottom_up.weights")
    assert set(required) <= changed


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("depth", DEPTHS)
def test_the_3x_schedule_is_36_epochs_with_drops_after_27_and_33_and_640_to_800_training(detector, depth):
    cfg = LazyConfig.load(config_path(detector, depth, "3x"))
    one_x = LazyConfig.load(config_path(detector, depth, "1x"))
    assert cfg.train.max_iter == MAX_ITER_3X == 263_880
    scheduler = cfg.lr_multiplier.scheduler
    assert list(scheduler.milestones) == [27 * ITERS_PER_EPOCH, 33 * ITERS_PER_EPOCH, MAX_ITER_3X]
    assert list(scheduler["values"]) == [1.0, 0.1, 0.01]
    warmup = cfg.lr_multiplier
    assert warmup.warmup_length * cfg.train.max_iter == pytest.approx(500)  # iterations, as the 1x
    assert (warmup.warmup_method, warmup.warmup_factor) == ("linear", 0.001)
    resize = cfg.dataloader.train.mapper.augmentations[0]
    assert list(resize.short_edge_length) == SHORT_EDGES_3X
    assert (resize.max_size, resize.sample_style) == (1333, "choice")
    assert cfg.train.eval_period == cfg.train.checkpointer.period == ITERS_PER_EPOCH  # per epoch
    assert cfg.optimizer == one_x.optimizer
    assert cfg.dataloader.test == one_x.dataloader.test  # single-scale 800 / 1333 test


# ---- DefaultPredictor users reach the trunks through get_rsb_cfg ---------------------------------
@pytest.mark.parametrize("trunk", sorted(TRUNK_WEIGHTS))
def test_get_rsb_cfg_takes_the_trunk_of_the_lazy_configs(trunk):
    depth = int(trunk[len("resnet") :])
    lazy = LazyConfig.load(config_path("mask_rcnn", depth, "3x"))
    cfg = get_rsb_cfg("mask_rcnn", trunk=trunk)
    assert cfg.MODEL.RSB.MODEL_NAME == lazy.model.backbone.bottom_up.model_name == trunk
    assert TRUNK_WEIGHTS[trunk] == lazy.model.backbone.bottom_up.weights
    assert list(cfg.MODEL.PIXEL_MEAN) == pytest.approx(list(lazy.model.pixel_mean))
    assert list(cfg.MODEL.PIXEL_STD) == pytest.approx(list(lazy.model.pixel_std))
    assert cfg.MODEL.RSB.WEIGHTS == ""  # the detector checkpoint holds the trunk


def test_get_rsb_cfg_keeps_resnet50_by_default_and_lets_opts_win():
    assert get_rsb_cfg("retinanet") == get_rsb_cfg("retinanet", trunk="resnet50")
    cfg = get_rsb_cfg("retinanet", trunk="resnet152", opts=["MODEL.RSB.MODEL_NAME=resnet18"])
    assert cfg.MODEL.RSB.MODEL_NAME == "resnet18"
    with pytest.raises(ValueError, match="trunk='resnet18': expected one of resnet50, resnet101, resnet152"):
        get_rsb_cfg("retinanet", trunk="resnet18")


def test_a_yacs_model_of_a_trunk_takes_the_lazy_models_weights():
    from detectron2.modeling import build_model

    lazy = build(config_path("faster_rcnn", 101, "1x"))
    yacs = build_model(get_rsb_cfg("faster_rcnn", trunk="resnet101"))
    lazy_shapes = {k: tuple(v.shape) for k, v in lazy.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in yacs.state_dict().items()} == lazy_shapes


# ---- one training iteration of each through train_net.py ---------------------------------------
# The R-152 1x configs are the R-152 3x models with the 1x schedule: their 3x twins train.
# One iteration through train_net.py per detector, each with a new trunk and the 3x recipe
# (multi-scale training): what a 1x config of the same trunk or a 3x config of another trunk
# changes is checked key by key above, so training every one of the 20 adds minutes, not coverage.
TRAINED = [("faster_rcnn", 101, "3x"), ("mask_rcnn", 152, "3x"), ("cascade_mask_rcnn", 101, "3x"), ("retinanet", 152, "3x")]
MIN_SIZE, MAX_SIZE = 128, 192
def _train_args(detector: str, depth: int, schedule: str, data, output_dir: str) -> list:
    # 3x: a multi-scale choice as the config's, scaled down; 1x: one scale
    short_edges = "[112,120,128]" if schedule == "3x" else f"[{MIN_SIZE}]"
    caps = ["+model.test_topk_candidates=100"] if detector == "retinanet" else [
        "model.proposal_generator.post_nms_topk=[1000,100]", "model.roi_heads.batch_size_per_image=32",
    ]  # CPU time: fewer sampled RoIs and test proposals
    return [
        "--config-file", config_path(detector, depth, schedule), *dataset_args(data), *NO_WEIGHTS,
        "train.max_iter=1", "train.eval_period=0", "train.log_period=1", f"train.output_dir={output_dir}",
        "train.device=cpu", "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
        f"dataloader.train.mapper.augmentations.0.short_edge_length={short_edges}",
        f"dataloader.train.mapper.augmentations.0.max_size={MAX_SIZE}",
        f"dataloader.test.mapper.augmentations.0.short_edge_length={MIN_SIZE}",
        f"dataloader.test.mapper.augmentations.0.max_size={MAX_SIZE}", "dataloader.test.num_workers=0",
        *caps,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def one_iteration_runs(tiny_shapes, tmp_path_factory):
    """Output folders of one ``train_net.py`` iteration of each config of :data:`TRAINED`, run in
    one subprocess (one interpreter start-up), checkpoints removed."""
    # Each run ends with a final checkpoint that no test reads (up to 1.2 GB with the AdamW state
    # of an R-152 Cascade), removed after the run: written to memory where there is room, it takes
    # a third of the time that a disk-backed folder takes.
    memory = "/dev/shm"
    in_memory = os.path.isdir(memory) and shutil.disk_usage(memory).free > 4 * 2**30
    out = tempfile.mkdtemp(prefix="model_zoo_runs_", dir=memory) if in_memory else str(tmp_path_factory.mktemp("model_zoo_runs"))
    runs, folders = [], {}
    for detector, depth, schedule in TRAINED:
        folder = os.path.join(out, f"{detector}_r{depth}_{schedule}")
        runs.append((_train_args(detector, depth, schedule, tiny_shapes, folder), folder))
        folders[(detector, depth, schedule)] = folder
    try:
        run_train_net_mains(runs)
        yield folders
    finally:
        if in_memory:
            shutil.rmtree(out, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("detector, depth, schedule", TRAINED, ids=[f"{d}_r{x}_{s}" for d, x, s in TRAINED])
def test_a_new_config_trains_an_iteration_with_its_recipe(one_iteration_runs, detector, depth, schedule):
    (record,) = [r for r in read_metrics(one_iteration_runs[(detector, depth, schedule)]) if "total_loss" in r]
    assert record["iteration"] == 0
    assert math.isfinite(record["total_loss"]) and record["total_loss"] > 0
    base_lr = LazyConfig.load(config_path(detector, depth, schedule)).optimizer.lr
    assert record["lr"] == pytest.approx(base_lr * 0.001)  # the first warmup step, from 0.001


# ---- the parameters and FLOPs table ------------------------------------------------------------
SCRIPT = os.path.join(REPO_ROOT, "projects", "model_zoo", "model_zoo_table.py")
_spec = importlib.util.spec_from_file_location("model_zoo_table", SCRIPT)
model_zoo_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(model_zoo_table)


def test_the_table_lists_every_config_and_scales_from_the_nearest_detectron2_model():
    names = model_zoo_table.default_configs()
    assert len(names) == 24 and names[0] == "COCO/faster_rcnn_rsb_r50_fpn_1x.py"
    assert names[-1] == "COCO/retinanet_rsb_r152_fpn_3x.py"
    assert model_zoo_table.describe("COCO/mask_rcnn_rsb_r101_fpn_3x.py") == ("mask_rcnn", 101, "3x")
    reference = model_zoo_table.reference_for
    assert reference("retinanet", "resnet152") == ("COCO-Detection/retinanet_R_101_FPN_3x.yaml", 0.291)
    assert reference("cascade_mask_rcnn", "resnet101") == ("Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml", 0.328)
    assert reference("faster_rcnn", "resnet50") == ("COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml", 0.209)
    assert reference("faster_rcnn", "resnet18") is None


@pytest.mark.slow
def test_the_script_prints_parameters_and_flops_of_a_config(tmp_path):
    name = "COCO/faster_rcnn_rsb_r101_fpn_1x.py"
    out = tmp_path / "table.json"
    command = [sys.executable, SCRIPT, name, "--image-size", "128", "--json", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])))
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    params = sum(p.numel() for p in build(os.path.join(REPO_ROOT, "configs", name)).parameters())
    (row,) = [line for line in result.stdout.splitlines() if line.startswith(f"| {name} |")]
    assert f"| {params:,} |" in row and "| resnet101 | 1x | 87,960 |" in row
    report = json.loads(out.read_text())
    (record,) = report["configs"]
    assert record["params"] == params and record["trunk"] == "resnet101"
    assert record["flops"] > record["flops_by_module"]["backbone.bottom_up"] > 0
    assert record["roi_counts"] == {"roi_heads.box_pooler": [1000]}  # the RPN's test-time maximum
    assert report["settings"]["image_size"] == [128, 128]
    (reference,) = report["detectron2_references"]
    assert reference["config"] == record["estimate"]["reference"] == "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml"
    expected = 0.286 * 8 * record["flops"] / reference["flops"] * 87_960 / 3600
    assert record["estimate"]["v100_gpu_hours"] == pytest.approx(expected, abs=0.05)
