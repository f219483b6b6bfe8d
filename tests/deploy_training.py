"""Briefly trained checkpoints of the six deployable detectors, from train_net.py, for export tests.

One subprocess runs ``train_net.main`` for each detector in turn (one interpreter start-up): a
ResNet-18 trunk, 128-px images, 2 iterations, on a generated COCO-format shapes set registered
with ``--register-coco``. Each output folder holds ``model_final.pth`` and the ``config.yaml``
that ``train_net.py`` saved, which the exporter and the predictors read.
"""

import json
import os
import subprocess
import sys
from typing import Dict, Tuple

from conftest import REPO_ROOT

TRAIN_NAME, VAL_NAME = "deploy_tiny_train", "deploy_tiny_val"
MIN_SIZE, MAX_SIZE = 128, 192

# name -> LazyConfig: the four shapes detectors and the mmdetection-faithful variants.
DEPLOY_CONFIGS = {
    "faster_rcnn": "configs/shapes/faster_rcnn_rsb_r50_fpn_shapes.py",
    "mask_rcnn": "configs/shapes/mask_rcnn_rsb_r50_fpn_shapes.py",
    "cascade_mask_rcnn": "configs/shapes/cascade_mask_rcnn_rsb_r50_fpn_shapes.py",
    "retinanet": "configs/shapes/retinanet_rsb_r50_fpn_shapes.py",
    "cascade_mask_rcnn_mmdet": "configs/COCO/cascade_mask_rcnn_rsb_r50_fpn_1x_mmdet.py",
    "retinanet_mmdet": "configs/COCO/retinanet_rsb_r50_fpn_1x_mmdet.py",
}
MASK_MODELS = {"mask_rcnn", "cascade_mask_rcnn", "cascade_mask_rcnn_mmdet"}

# CPU time: 100 RPN proposals at test (COCO: 1000), 100 RetinaNet candidates per level.
TEST_CAPS = {
    "rcnn": ["model.proposal_generator.post_nms_topk=[1000,100]"],
    "retinanet": ["+model.test_topk_candidates=100"],
}


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


def register_args(paths: Dict[str, Dict[str, str]]) -> list:
    return [
        "--register-coco", f"{TRAIN_NAME}={paths['train']['json_file']}:{paths['train']['image_root']}",
        "--register-coco", f"{VAL_NAME}={paths['val']['json_file']}:{paths['val']['image_root']}",
    ]  # fmt: skip


def _train_args(name: str, paths, output_dir: str) -> list:
    return [
        "--config-file", os.path.join(REPO_ROOT, DEPLOY_CONFIGS[name]), *register_args(paths),
        f"dataloader.train.dataset.names={TRAIN_NAME}",
        "train.max_iter=2", "train.eval_period=0", f"train.output_dir={output_dir}", "train.device=cpu",
        # A fixed seed (the shapes configs' own; the COCO configs have none, so Detectron2 would
        # draw one): whether 2 iterations lift a score above the tests' threshold is then not luck.
        "+train.seed=42",
        "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
        f"dataloader.train.mapper.augmentations.0.short_edge_length=[{MIN_SIZE}]",
        f"dataloader.train.mapper.augmentations.0.max_size={MAX_SIZE}",
        # CPU time: 32 sampled RoIs per image cut the RoI heads' backward. RetinaNet starts with
        # every score at its prior (0.01): a larger step spreads them within 2 iterations.
        *(["optimizer.lr=0.002"] if name.startswith("retinanet") else ["model.roi_heads.batch_size_per_image=32"]),
        *model_overrides(name),
    ]  # fmt: skip


_TRAIN_DRIVER = """
import json, sys
sys.path.insert(0, {repo!r})
import train_net
for argv in json.loads(sys.argv[1]):
    train_net.main(train_net.build_argument_parser().parse_args(argv))
"""


def train_deploy_checkpoints(paths, out_dir: str, names=tuple(DEPLOY_CONFIGS)) -> Dict[str, Tuple[str, str]]:
    """Train each detector of ``names`` for 2 iterations; return name -> (config.yaml, checkpoint).

    Args:
        paths: the generated data set (``generate_shapes_dataset``'s return value).
        out_dir: a folder for the outputs, one subfolder per detector.
        names: keys of :data:`DEPLOY_CONFIGS`.
    """
    runs, files = [], {}
    for name in names:
        output_dir = os.path.join(out_dir, name)
        runs.append(_train_args(name, paths, output_dir))
        files[name] = (os.path.join(output_dir, "config.yaml"), os.path.join(output_dir, "model_final.pth"))
    result = subprocess.run(
        [sys.executable, "-c", _TRAIN_DRIVER.format(repo=REPO_ROOT), json.dumps(runs)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if result.returncode != 0:
        raise AssertionError(f"train_net.py failed:\n{result.stderr[-4000:]}")
    for name, (config, checkpoint) in files.items():
        assert os.path.isfile(config) and os.path.isfile(checkpoint), f"{name}: no {config} or {checkpoint}"
    return files


if __name__ == "__main__":  # python3 tests/deploy_training.py OUT_DIR: data and checkpoints for manual runs
    from shapes_generator import generate_shapes_dataset

    out = sys.argv[1]
    root = os.path.join(out, "shapes")
    data = generate_shapes_dataset(root, num_train=8, num_val=4, min_size=128, max_size=176, seed=1)
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else tuple(DEPLOY_CONFIGS)
    print(json.dumps({"data": data, "models": train_deploy_checkpoints(data, out, names)}, indent=1))
