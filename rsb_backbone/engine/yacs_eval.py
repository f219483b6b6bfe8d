"""``train_net.py --eval-only`` for yacs configs (``configs/yacs``): COCO evaluation with pycocotools.

Training stays on LazyConfigs; their checkpoints evaluate here unchanged, because the yacs
configs build the same modules. Usage::

    python3 train_net.py --config-file configs/yacs/mask_rcnn_rsb_r50_fpn_1x.yaml --eval-only \
        MODEL.WEIGHTS output/model_final.pth
"""

import logging
import os
from collections import OrderedDict
from typing import Any, Dict, Sequence

from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import COCOEvaluator, inference_on_dataset, print_csv_format
from detectron2.modeling import build_model
from detectron2.utils import comm

from ..data import num_classes_of
from ..inference.checkpoint import load_detector_checkpoint
from ..inference.config_files import YACS, config_file_kind
from ..inference.devices import resolve_device_name
from ..inference.yacs_configs import load_yacs_config
from .checkpoint import AtomicCheckpointer
from .outcomes import user_input_stage
from .training import write_eval_results

logger = logging.getLogger(__name__)

__all__ = ["is_yacs_config", "setup_yacs_config", "evaluate_yacs"]


def is_yacs_config(config_file: str) -> bool:
    """Whether ``config_file`` is a yacs config (see :func:`~rsb_backbone.inference.config_file_kind`)."""
    return config_file_kind(config_file) == YACS


def _sync_num_classes(cfg: CfgNode) -> int:
    """Set the head's number of classes from the test data sets, which must agree."""
    names = list(cfg.DATASETS.TEST)
    if not names:
        raise ValueError("DATASETS.TEST is empty; name the data set to evaluate on")
    counts = {name: num_classes_of(name) for name in names}
    if len(set(counts.values())) > 1:
        raise ValueError(f"DATASETS.TEST data sets have different numbers of classes: {counts}")
    num_classes = counts[names[0]]
    head = cfg.MODEL.RETINANET if cfg.MODEL.META_ARCHITECTURE == "RetinaNet" else cfg.MODEL.ROI_HEADS
    if head.NUM_CLASSES != num_classes:
        logger.info("NUM_CLASSES = %d (classes of %s)", num_classes, names[0])
    head.NUM_CLASSES = num_classes
    return num_classes


def setup_yacs_config(config_file: str, opts: Sequence[str], *, eval_only: bool) -> CfgNode:
    """Load a yacs config for evaluation: overrides, device check, classes from the test set.

    Args:
        config_file: a yacs YAML file.
        opts: ``KEY VALUE`` pairs or ``KEY=VALUE`` overrides (e.g. ``MODEL.WEIGHTS=model.pth``).
        eval_only: must be True: yacs configs are not used for training here.

    Returns:
        the frozen config.
    """
    if not eval_only:
        raise ValueError(
            f"{config_file} is a yacs config, which train_net.py only evaluates (--eval-only); "
            f"train with a LazyConfig (configs/COCO/*.py, configs/shapes/*.py)"
        )
    cfg = load_yacs_config(config_file, opts=opts)
    cfg.MODEL.DEVICE = resolve_device_name(cfg.MODEL.DEVICE)
    _sync_num_classes(cfg)
    cfg.freeze()
    return cfg


def evaluate_yacs(cfg: CfgNode, *, resume: bool) -> Dict[str, Any]:
    """Evaluate ``MODEL.WEIGHTS`` (or, with ``resume``, ``OUTPUT_DIR``'s last checkpoint) on
    every ``DATASETS.TEST`` data set with Detectron2's ``COCOEvaluator``.

    Args:
        cfg: from :func:`setup_yacs_config`.
        resume: evaluate the checkpoint that ``last_checkpoint`` in ``OUTPUT_DIR`` names.

    Returns:
        the results of the data set, or a dict of them by data set name when there are several;
        also written to ``OUTPUT_DIR/eval_results.json``.
    """
    with user_input_stage():
        model = build_model(cfg)
        model.eval()
        checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR)
        if resume and checkpointer.has_checkpoint():
            load_detector_checkpoint(model, checkpointer.get_checkpoint_file())
        elif cfg.MODEL.WEIGHTS:
            load_detector_checkpoint(model, cfg.MODEL.WEIGHTS)
        else:
            raise ValueError("--eval-only needs a checkpoint: MODEL.WEIGHTS PATH (or --resume)")
    results = OrderedDict()
    for name in cfg.DATASETS.TEST:
        evaluator = COCOEvaluator(name, output_dir=os.path.join(cfg.OUTPUT_DIR, "inference", name))
        results[name] = inference_on_dataset(model, build_detection_test_loader(cfg, name), evaluator)
        if comm.is_main_process():
            logger.info("Results on %s:", name)
            print_csv_format(results[name])
    if len(results) == 1:
        results = next(iter(results.values()))
    path = write_eval_results(results, cfg.OUTPUT_DIR)
    if path:
        logger.info("Evaluation results written to %s", path)
    return results
