"""Mixed precision on the CPU (bfloat16 under ``torch.autocast("cpu")``): one training step of each
COCO detector against float32, ``train_net.py`` training, resuming and evaluating in bfloat16, and
the refusals and the warning. The predictors in bfloat16 are tested in test_inference.py.

The CPUs of these tests compute bfloat16 natively where they have ``avx512_bf16`` or AMX; elsewhere
PyTorch emulates it (slower, same results), so nothing here skips on the CPU's kind.
"""

import copy
import json
import logging
import math
import os
import shutil

import pytest
import torch

from detectron2.config import instantiate
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from conftest import REPO_ROOT
from rsb_backbone.config import head_config, load_config_with_overrides
from rsb_backbone.utils import mixed_precision
from rsb_backbone.utils.mixed_precision import PRECISIONS, autocast, resolve_precision
from train_net_runner import (
    FAST_OVERRIDES,
    dataset_args,
    read_eval_results,
    read_metrics,
    run_train_net_mains,
    shapes_config,
    train_net_in_process,
)
from trained_detectors import QUICK_DEMO_CONFIG, model_overrides

DETECTORS = ("faster_rcnn", "mask_rcnn", "cascade_mask_rcnn", "retinanet")
COCO_CONFIGS = [f"{d}_rsb_r50_fpn_1x{twin}" for d in DETECTORS for twin in ("", "_mmdet")]
BF16 = ["train.amp.enabled=True", "train.amp.precision=bfloat16"]

# bfloat16 keeps 8 significant bits (relative rounding 2**-9 = 0.002 per operation): a loss summed
# from thousands of such terms stays within 2e-2 of float32, and gradients point the same way.
LOSS_RTOL = 2e-2
MIN_GRADIENT_COSINE = 0.99
# Module groups whose gradients are compared, by parameter name prefix.
MODULE_GROUPS = {
    "trunk": ("backbone.bottom_up.",),
    "fpn": ("backbone.",),
    "rpn or dense head": ("proposal_generator.", "head."),
    "roi heads": ("roi_heads.",),
}
AP_TOLERANCE = 1.0  # COCO AP points, bfloat16 against float32 evaluation of the same checkpoint


def _small_batch(seed: int = 0) -> list:
    """Two images (96x128, 96x96) with three boxes (16-40 px) of classes 0-2 and their box-shaped masks."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for height, width in ((96, 128), (96, 96)):
        xy = torch.rand(3, 2, generator=g) * torch.tensor([width - 40.0, height - 40.0])
        boxes = torch.cat([xy, xy + 16 + 24 * torch.rand(3, 2, generator=g)], dim=1)
        masks = torch.zeros(3, height, width, dtype=torch.bool)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.round().long().tolist()):
            mask[y0:y1, x0:x1] = True
        instances = Instances((height, width), gt_boxes=Boxes(boxes), gt_classes=torch.randint(0, 3, (3,), generator=g))
        instances.gt_masks = BitMasks(masks)
        image = 255 * torch.rand(3, height, width, generator=g)
        batch.append({"image": image, "instances": instances, "height": height, "width": width})
    return batch


class _SameProposals(torch.nn.Module):
    """The RPN, computing its losses in every pass but handing the RoI heads the proposals of the
    first pass: with random weights the objectness logits are all near 0, so which of them are the
    top-k flips with any rounding, and the RoI heads would sample other boxes. The proposals carry
    no gradient (Detectron2 treats them as fixed), so the comparison of the RoI heads stays exact."""

    def __init__(self, rpn: torch.nn.Module):
        super().__init__()
        self.rpn = rpn
        self.first_proposals = None

    def forward(self, *args, **kwargs):
        proposals, losses = self.rpn(*args, **kwargs)
        if self.first_proposals is None:
            self.first_proposals = proposals
        return self.first_proposals, losses


def _training_step(model: torch.nn.Module, batch: list, dtype: torch.dtype):
    """One forward and backward pass in ``dtype``: losses and each module group's gradient."""
    torch.manual_seed(0)  # the same RoI and anchor sampling in both precisions
    with EventStorage(), autocast("cpu", dtype):
        losses = model(batch)
    sum(losses.values()).backward()
    gradients = {}
    for name, parameter in model.named_parameters():
        group = next((g for g, prefixes in MODULE_GROUPS.items() if name.startswith(prefixes)), None)
        if parameter.grad is not None and group is not None:
            gradients.setdefault(group, []).append(parameter.grad.flatten().double())
    return {k: float(v) for k, v in losses.items()}, {k: torch.cat(v) for k, v in gradients.items()}


@pytest.mark.slow
@pytest.mark.parametrize("config", COCO_CONFIGS)
def test_a_bf16_training_step_matches_fp32(config):
    """The unchanged COCO config's detector (ResNet-18 trunk, random weights, 16 sampled RoIs per image)."""
    overrides = ["model.backbone.bottom_up.model_name=resnet18", "model.backbone.bottom_up.weights=None"]
    if not config.startswith("retinanet"):
        overrides.append("model.roi_heads.batch_size_per_image=16")
    cfg = load_config_with_overrides(os.path.join(REPO_ROOT, "configs", "COCO", f"{config}.py"), overrides)
    head_config(cfg).num_classes = 3
    torch.manual_seed(0)
    fp32_model = instantiate(cfg.model).train()
    if hasattr(fp32_model, "proposal_generator"):
        fp32_model.proposal_generator = _SameProposals(fp32_model.proposal_generator)
    bf16_model = copy.deepcopy(fp32_model)  # the same weights and state (RetinaNet's loss normalizer)
    batch = _small_batch()
    fp32_losses, fp32_gradients = _training_step(fp32_model, batch, torch.float32)
    if hasattr(fp32_model, "proposal_generator"):
        bf16_model.proposal_generator.first_proposals = fp32_model.proposal_generator.first_proposals
    bf16_losses, bf16_gradients = _training_step(bf16_model, batch, torch.bfloat16)

    assert bf16_losses.keys() == fp32_losses.keys()
    for name, expected in fp32_losses.items():
        assert math.isfinite(bf16_losses[name])
        assert bf16_losses[name] == pytest.approx(expected, rel=LOSS_RTOL, abs=1e-4), name
    expected_groups = {"trunk", "fpn", "rpn or dense head"} | ({"roi heads"} if "retinanet" not in config else set())
    assert fp32_gradients.keys() == bf16_gradients.keys() == expected_groups
    for group, expected in fp32_gradients.items():
        cosine = float(torch.nn.functional.cosine_similarity(expected, bf16_gradients[group], dim=0))
        assert cosine >= MIN_GRADIENT_COSINE, f"{group}: gradient cosine {cosine:.4f}"


# ---- train_net.py in bfloat16 on the session's trained shapes detector -------------------------


def _fp32_tensors(checkpoint: str) -> list:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    return [k for k, v in state.items() if v.is_floating_point() and v.dtype != torch.float32]


@pytest.fixture(scope="module")
def bf16_runs(trained_detectors, tiny_shapes, quick_demo, tmp_path_factory):
    """Two ``train_net.py`` runs in bfloat16 in one subprocess: ``--resume`` from the shared
    faster_rcnn's checkpoint after iteration 1 (trained in float32, tests/trained_detectors.py) to
    the end (iteration 2 of 3) with the final evaluation, and ``--eval-only`` of the quick demo's
    final checkpoint on its 50 validation images (the tiny set's 4 images make AP move in steps of
    about 2 points: one detection more or less)."""
    trained = trained_detectors["faster_rcnn"]
    out = tmp_path_factory.mktemp("bf16_runs")
    resumed, evaluated = str(out / "resumed"), str(out / "eval_only")
    os.makedirs(resumed)
    shutil.copy(os.path.join(trained.output_dir, "model_0000001.pth"), resumed)
    with open(os.path.join(resumed, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    config = shapes_config("faster_rcnn")
    model_args = [*dataset_args(tiny_shapes), *FAST_OVERRIDES, *model_overrides("faster_rcnn"), "train.device=cpu"]
    train_args = [
        "--config-file", config, "--resume", *model_args, *BF16, "train.max_iter=3", "train.eval_period=3",
        "train.checkpointer.period=1000", "model.roi_heads.batch_size_per_image=32", "+train.seed=42",
        f"train.output_dir={resumed}",
    ]  # fmt: skip
    shapes = os.path.join(quick_demo.datasets_dir, "shapes")
    eval_args = [
        "--config-file", os.path.join(REPO_ROOT, QUICK_DEMO_CONFIG), "--eval-only",
        "--register-coco", f"quick_demo_val={shapes}/val.json:{shapes}/val", *BF16, "train.device=cpu",
        "dataloader.test.dataset.names=quick_demo_val", "dataloader.test.num_workers=0",
        f"train.init_checkpoint={quick_demo.checkpoint}", f"train.output_dir={evaluated}",
    ]  # fmt: skip
    run_train_net_mains([(train_args, None), (eval_args, None)])
    return {"quick_demo": quick_demo, "resumed": resumed, "eval_only": evaluated}


@pytest.mark.slow
def test_train_net_resumes_an_fp32_run_in_bf16_to_its_end_with_evaluation(bf16_runs):
    resumed = bf16_runs["resumed"]
    with open(os.path.join(resumed, "log.txt")) as f:
        log = f.read()
    assert "Resuming at iteration 2 of 3" in log and "Mixed precision training in torch.bfloat16" in log
    assert "Inference in torch.bfloat16" in log  # the final evaluation, in the training's precision
    (record,) = [r for r in read_metrics(resumed) if "total_loss" in r]
    assert record["iteration"] == 2 and math.isfinite(record["total_loss"]) and record["total_loss"] > 0
    assert 0.0 <= read_eval_results(resumed)["bbox"]["AP"] <= 100.0
    final = os.path.join(resumed, "model_final.pth")
    assert _fp32_tensors(final) == []  # the weights stay float32
    trainer_state = torch.load(final, map_location="cpu", weights_only=True)["trainer"]
    assert trainer_state["grad_scaler"] == {}  # bfloat16 needs no loss scaling


@pytest.mark.slow
def test_eval_only_in_bf16_gives_the_fp32_ap(bf16_runs):
    fp32 = read_eval_results(bf16_runs["quick_demo"].output_dir)["bbox"]  # its final evaluation
    bf16 = read_eval_results(bf16_runs["eval_only"])["bbox"]
    assert fp32["AP"] > 0, "the float32 evaluation found nothing: no AP to compare"
    for metric in ("AP", "AP50", "AP75"):
        assert abs(bf16[metric] - fp32[metric]) <= AP_TOLERANCE, (metric, bf16[metric], fp32[metric])


# ---- refusals and the warning ------------------------------------------------------------------


def test_fp16_training_on_the_cpu_is_refused_in_one_line():
    args = ["--config-file", shapes_config("faster_rcnn"), "train.device=cpu", "train.amp.enabled=True"]
    result = train_net_in_process(args)  # float16: the default precision, as in Detectron2
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "train.amp.precision=float16 needs a CUDA device" in line and "train.amp.precision=bfloat16" in line


@pytest.mark.parametrize(
    "precision, message",
    [("half", "train.amp.precision='half': expected one of float32, float16, bfloat16"),
     ("float32", "expected float16 or bfloat16")],
)  # fmt: skip
def test_unknown_training_precisions_are_refused(precision, message):
    args = ["--config-file", shapes_config("faster_rcnn"), "train.device=cpu", *BF16, f"train.amp.precision={precision}"]
    result = train_net_in_process(args)
    assert result.returncode == 2 and message in result.stderr


def test_bf16_on_a_cpu_without_bf16_instructions_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(mixed_precision, "cpu_has_bf16_instructions", lambda: False)
    monkeypatch.setattr(mixed_precision, "_warned", set())
    with caplog.at_level(logging.WARNING, logger=mixed_precision.__name__):
        for _ in range(2):
            assert resolve_precision("bf16", "cpu", key="--precision") == torch.bfloat16
    (record,) = caplog.records
    assert record.getMessage().startswith("--precision=bf16 on a CPU without bf16 instructions")
    assert "slower than float32" in record.getMessage()


def test_bf16_on_a_cpu_with_bf16_instructions_is_silent(monkeypatch, caplog):
    monkeypatch.setattr(mixed_precision, "cpu_has_bf16_instructions", lambda: True)
    monkeypatch.setattr(mixed_precision, "_warned", set())
    with caplog.at_level(logging.WARNING, logger=mixed_precision.__name__):
        assert resolve_precision("bfloat16", "cpu") == torch.bfloat16
    assert caplog.records == []


def test_the_cpu_check_agrees_with_proc_cpuinfo():
    if not os.path.isfile("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo")
    with open("/proc/cpuinfo") as f:
        flags = set(f.read().split())
    if "amx_bf16" in flags or "avx512_bf16" in flags:
        assert mixed_precision.cpu_has_bf16_instructions()
    elif "amx_tile" not in flags:
        assert not mixed_precision.cpu_has_bf16_instructions()


def test_the_loss_scale_resumes_only_from_a_float16_run(caplog):
    """The trainer state of a float32 run (no scaler) or a bfloat16 run (a disabled scaler's empty
    state) leaves a float16 run's scaler at its initial scale; a float16 run's scale is restored.
    (The scaler on the CPU here: CUDA's takes the same states.)"""
    from detectron2.engine import SimpleTrainer

    from rsb_backbone.engine.training import _CheckedAMPTrainer

    def trainer(kind):
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        if kind == "float32":
            return SimpleTrainer(model, [], optimizer)
        return _CheckedAMPTrainer(model, [], optimizer, device="cpu", precision=PRECISIONS[kind])

    saved = trainer("float16")
    saved.grad_scaler.scale(torch.ones(()))  # creates the scale
    saved.grad_scaler.update(new_scale=1024.0)
    fp16_state = saved.state_dict()
    for source in ("float32", "bfloat16"):
        resumed = trainer("float16")
        with caplog.at_level(logging.INFO, logger="rsb_backbone.engine.training"):
            resumed.load_state_dict(trainer(source).state_dict())
        assert resumed.grad_scaler.get_scale() == 2.0**16  # GradScaler's initial scale
        assert "no float16 loss scale" in caplog.text
    resumed = trainer("float16")
    resumed.load_state_dict(fp16_state)
    assert resumed.grad_scaler.get_scale() == 1024.0
    for target in ("bfloat16", "float32"):  # and the other way: the scale is not needed there
        trainer(target).load_state_dict(fp16_state)
