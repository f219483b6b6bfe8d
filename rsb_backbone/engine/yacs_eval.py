"""``--eval-only`` of the training entry point for yacs configs (``configs/yacs``), which build the same modules
as the LazyConfigs, so their checkpoints evaluate unchanged; training stays on LazyConfigs."""

import os
from typing import Any, Dict, Sequence

from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model

from ..config import load_yacs_config, resolve_device, sync_num_classes
from ..data.coco_registration import check_registered_sets
from ..utils.mixed_precision import in_precision, resolve_precision
from .outcomes import user_input_stage
from .training import load_eval_checkpoint, write_eval_results


def setup_yacs_config(config_file: str, opts: Sequence[str], *, eval_only: bool) -> CfgNode:
    """Load a yacs config for evaluation: overrides, device and precision checks, classes from the test set.

    Args:
        config_file: a yacs YAML file.
        opts: ``KEY VALUE`` pairs or ``KEY=VALUE`` overrides (e.g. ``MODEL.WEIGHTS=model.pth``).
        eval_only: must be True (no training from yacs configs).

    Returns:
        the frozen config.
    """
    if not eval_only:
        raise ValueError(
            f"{config_file} is a yacs config, which is for evaluation only (--eval-only); "
            f"train with a LazyConfig (configs/COCO/*.py, configs/shapes/*.py)"
        )
    cfg = load_yacs_config(config_file, opts=opts)
    cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE)
    resolve_precision(cfg.TEST.PRECISION, cfg.MODEL.DEVICE, key="TEST.PRECISION")
    sync_num_classes(cfg)
    cfg.freeze()
    return cfg


def evaluate_yacs(cfg: CfgNode, *, resume: bool) -> Dict[str, Any]:
    """Evaluate ``MODEL.WEIGHTS`` (or, with ``resume``, ``OUTPUT_DIR``'s last checkpoint) on
    every ``DATASETS.TEST`` data set with Detectron2's ``COCOEvaluator``, in ``TEST.PRECISION``.

    Args:
        cfg: from :func:`setup_yacs_config`.
        resume: evaluate the checkpoint that ``last_checkpoint`` in ``OUTPUT_DIR`` names.

    Returns:
        the results (by data set name when there are several), also in ``OUTPUT_DIR/eval_results.json``.
    """
    with user_input_stage():
        model = build_model(cfg).eval()
        load_eval_checkpoint(model, cfg.OUTPUT_DIR, cfg.MODEL.WEIGHTS, resume=resume, key="MODEL.WEIGHTS")
        check_registered_sets(cfg.DATASETS.TEST)  # before the evaluators read their metadata
    evaluators = [
        COCOEvaluator(name, output_dir=os.path.join(cfg.OUTPUT_DIR, "inference", name))
        for name in cfg.DATASETS.TEST
    ]
    precision = resolve_precision(cfg.TEST.PRECISION, cfg.MODEL.DEVICE, key="TEST.PRECISION")
    results = DefaultTrainer.test(cfg, in_precision(model, cfg.MODEL.DEVICE, precision), evaluators)
    write_eval_results(results, cfg.OUTPUT_DIR)
    return results
