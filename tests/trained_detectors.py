"""Trained checkpoints shared by the training, inference, ``_mmdet`` and export tests, made once
per test session by ``train_net.py`` (fixtures of conftest.py):

- the README's quick CPU demo as its command stands (``quick_demo``): Faster R-CNN with a
  ResNet-18 trunk, 200 iterations on the generated shapes, box AP about 40;
- the four shapes detectors and the four mmdetection-faithful (``_mmdet``) configs
  (``trained_detectors``).

The three R-CNN shapes detectors start from the quick demo's weights (its trunk, FPN and RPN, and
the box head where the names match), so that they behave as trained models do: a trained RPN's
objectness logits reach far below 0, which a randomly initialised one (logits near 0) never
shows. RetinaNet and the ``_mmdet`` configs start from random weights.

One subprocess runs ``train_net.main`` for each detector in turn (one interpreter start-up): a
ResNet-18 trunk, 128-px images, 3 iterations on the session's tiny shapes set registered with
``--register-coco`` as ``tiny_train``/``tiny_val``; for the shapes detectors also the final COCO
evaluation and then ``--eval-only`` of the final checkpoint. Each training folder holds
``model_final.pth`` (the shapes detectors also ``model_0000001.pth``, after the second
iteration), ``metrics.json``, TensorBoard events and the ``config.yaml`` that ``train_net.py``
saved (and ``eval_results.json``). Checkpoints with AdamW state take about a second per 350 MB to
write, so the runs write no others.
"""

import json
import os
import sys
from typing import Dict, NamedTuple, Optional

from conftest import REPO_ROOT
from train_net_runner import dataset_args, run_train_net, run_train_net_mains

MAX_ITER = 3
CHECKPOINT_PERIOD = 2  # model_0000001.pth, then model_final.pth after the third iteration
MIN_SIZE, MAX_SIZE = 128, 192
TRAIN_NAME, VAL_NAME = "tiny_train", "tiny_val"  # the names train_net_runner.dataset_args registers

SHAPES_DETECTORS = ("faster_rcnn", "mask_rcnn", "cascade_mask_rcnn", "retinanet")
# Fine-tuned from the quick demo's checkpoint (trunk, FPN, RPN and, where the names match, box head).
FROM_QUICK_DEMO = ("faster_rcnn", "mask_rcnn", "cascade_mask_rcnn")
QUICK_DEMO_CONFIG = "configs/shapes/faster_rcnn_rsb_r18_fpn_shapes_quick.py"
# name -> LazyConfig: the four shapes detectors and the four mmdetection-faithful configs.
DETECTOR_CONFIGS = {
    **{name: f"configs/shapes/{name}_rsb_r50_fpn_shapes.py" for name in SHAPES_DETECTORS},
    **{f"{name}_mmdet": f"configs/COCO/{name}_rsb_r50_fpn_1x_mmdet.py" for name in SHAPES_DETECTORS},
}
# The export tests take the four detectors and the two _mmdet models whose inference differs.
DEPLOYED = (*SHAPES_DETECTORS, "cascade_mask_rcnn_mmdet", "retinanet_mmdet")
MASK_MODELS = {"mask_rcnn", "cascade_mask_rcnn", "mask_rcnn_mmdet", "cascade_mask_rcnn_mmdet"}

# CPU time: 100 RPN proposals at test (COCO: 1000), 100 RetinaNet candidates per level.
TEST_CAPS = {
    "rcnn": ["model.proposal_generator.post_nms_topk=[1000,100]"],
    "retinanet": ["+model.test_topk_candidates=100"],
}


# RetinaNet starts with every score at its prior (0.01): a larger step spreads them within the 3
# iterations. Measured on the tiny set: at 0.002 the plain RetinaNet's top scores all reach 1.0
# (ties that the exported and PyTorch models break differently), at 0.001 they spread to 0.1-0.17
# with 20-28 detections above 0.02; the mmdetection-faithful one, normalised by the batch's
# positives, detects nothing above 0.02 at 0.001 and spreads to 0.07-0.14 at 0.002.
RETINANET_LR = {"retinanet": ["optimizer.lr=0.001"], "retinanet_mmdet": ["optimizer.lr=0.002"]}


class TrainedDetector(NamedTuple):
    """The outputs of one detector's training and of ``--eval-only`` on its final checkpoint."""

    output_dir: str
    config: str  # the config.yaml train_net.py saved
    checkpoint: str  # model_final.pth
    eval_dir: Optional[str]  # --eval-only output folder (eval_results.json, log.txt); shapes detectors


def model_overrides(name: str) -> list:
    """Config overrides shared by training, ``--eval-only`` and the exporter."""
    caps = TEST_CAPS["retinanet" if name.startswith("retinanet") else "rcnn"]
    return [
        "model.backbone.bottom_up.model_name=resnet18",
        "model.backbone.bottom_up.weights=None",
        f"dataloader.test.mapper.augmentations.0.short_edge_length={MIN_SIZE}",
        f"dataloader.test.mapper.augmentations.0.max_size={MAX_SIZE}",
        f"dataloader.test.dataset.names={VAL_NAME}",
        "dataloader.test.num_workers=0",
        *caps,
    ]


class QuickDemo(NamedTuple):
    """The outputs of the README's quick CPU demo command."""

    output_dir: str
    checkpoint: str  # model_final.pth
    datasets_dir: str  # $RSB_DATASETS of the run: shapes/ generated there


def train_quick_demo(out_dir: str) -> QuickDemo:
    """Run the README's quick CPU demo command (its config unchanged) with its data set generated
    under ``out_dir/datasets`` and its outputs in ``out_dir/output``."""
    demo = QuickDemo(
        os.path.join(out_dir, "output"),
        os.path.join(out_dir, "output", "model_final.pth"),
        os.path.join(out_dir, "datasets"),
    )
    run_train_net(
        ["--config-file", os.path.join(REPO_ROOT, QUICK_DEMO_CONFIG), f"train.output_dir={demo.output_dir}"],
        env={"RSB_DATASETS": demo.datasets_dir},
        timeout=2400,
    )
    assert os.path.isfile(demo.checkpoint), f"the quick demo left no {demo.checkpoint}"
    return demo


def _train_args(name: str, paths, output_dir: str, init_checkpoint: Optional[str]) -> list:
    return [
        "--config-file", os.path.join(REPO_ROOT, DETECTOR_CONFIGS[name]), *dataset_args(paths),
        *([f"train.init_checkpoint={init_checkpoint}"] if init_checkpoint and name in FROM_QUICK_DEMO else []),
        # The final evaluation for the four shapes detectors, whose results the tests read.
        f"train.max_iter={MAX_ITER}", f"train.eval_period={MAX_ITER if name in SHAPES_DETECTORS else 0}",
        "train.log_period=1",
        # Checkpoints: after iteration 1 (model_0000001.pth, the tests' "before" of the shapes
        # detectors) and model_final.pth; the _mmdet ones only model_final.pth.
        f"train.checkpointer.period={CHECKPOINT_PERIOD if name in SHAPES_DETECTORS else 1000}",
        "train.checkpointer.max_to_keep=10", f"train.output_dir={output_dir}",
        "train.device=cpu",
        # A fixed seed (the shapes configs' own; the COCO configs have none, so Detectron2 would
        # draw one): whether 3 iterations lift a score above the tests' threshold is then not luck.
        "+train.seed=42",
        "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
        f"dataloader.train.mapper.augmentations.0.short_edge_length=[{MIN_SIZE}]",
        f"dataloader.train.mapper.augmentations.0.max_size={MAX_SIZE}",
        # CPU time: 32 sampled RoIs per image cut the RoI heads' backward.
        *([] if name.startswith("retinanet") else ["model.roi_heads.batch_size_per_image=32"]),
        *RETINANET_LR.get(name, []),
        *model_overrides(name),
    ]  # fmt: skip


def _eval_args(name: str, paths, checkpoint: str, eval_dir: str) -> list:
    return [
        "--config-file", os.path.join(REPO_ROOT, DETECTOR_CONFIGS[name]), "--eval-only", *dataset_args(paths),
        f"train.init_checkpoint={checkpoint}", f"train.output_dir={eval_dir}", *model_overrides(name),
    ]  # fmt: skip


def train_detectors(
    paths, out_dir: str, names=tuple(DETECTOR_CONFIGS), init_checkpoint: Optional[str] = None
) -> Dict[str, TrainedDetector]:
    """Train each detector of ``names``, then evaluate the final checkpoint of each shapes detector.

    Args:
        paths: the generated data set (``generate_shapes_dataset``'s return value).
        out_dir: a folder for the outputs, two subfolders per detector.
        names: keys of :data:`DETECTOR_CONFIGS`.
        init_checkpoint: the quick demo's checkpoint, the start of the :data:`FROM_QUICK_DEMO`
            detectors (None: random weights).
    """
    runs, trained = [], {}
    for name in names:
        output_dir = os.path.join(out_dir, name)
        detector = TrainedDetector(
            output_dir,
            os.path.join(output_dir, "config.yaml"),
            os.path.join(output_dir, "model_final.pth"),
            os.path.join(out_dir, f"{name}_eval") if name in SHAPES_DETECTORS else None,
        )
        runs.append((_train_args(name, paths, output_dir, init_checkpoint), None))
        if detector.eval_dir:
            runs.append((_eval_args(name, paths, detector.checkpoint, detector.eval_dir), None))
        trained[name] = detector
    run_train_net_mains(runs)
    for name, detector in trained.items():
        evaluated = [os.path.join(detector.eval_dir, "eval_results.json")] if detector.eval_dir else []
        for path in (detector.config, detector.checkpoint, *evaluated):
            assert os.path.isfile(path), f"{name}: no {path}"
    return trained


if __name__ == "__main__":  # python3 tests/trained_detectors.py OUT_DIR: data and checkpoints for manual runs
    from rsb_backbone.data.datasets.shapes import generate_shapes_dataset

    out = sys.argv[1]
    data = generate_shapes_dataset(os.path.join(out, "shapes"), num_train=8, num_val=4, min_size=128, max_size=176, seed=1)
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else tuple(DETECTOR_CONFIGS)
    quick_demo = os.path.join(out, "quick_demo", "output", "model_final.pth")
    if not os.path.isfile(quick_demo):
        quick_demo = train_quick_demo(os.path.join(out, "quick_demo")).checkpoint
    print(json.dumps({"data": data, "models": train_detectors(data, out, names, quick_demo)}, indent=1))
