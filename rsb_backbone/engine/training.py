"""Training and evaluation loops for LazyConfigs (what ``train_net.py`` runs in each worker)."""

import json
import logging
import os
from typing import Any, Dict, Optional

from detectron2.config import instantiate
from detectron2.engine import default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from ..detector_checkpoint import load_detector_checkpoint
from ..model_metadata import ModelMetadataState, training_model_metadata
from .atomic_checkpointer import AtomicCheckpointer, remove_stale_temporary_files
from .hooks import GradientClipHook
from .outcomes import NonFiniteLossError, user_input_stage
from .stop_signals import CheckpointOnSignalHook, ignore_stop_signals_in_workers
from .trainers import build_trainer

logger = logging.getLogger(__name__)

__all__ = ["do_test", "do_train", "load_eval_checkpoint", "wrap_ddp", "write_eval_results"]


def wrap_ddp(model, *, fp16_compression: bool = False, **kwargs):
    """Wrap ``model`` in DistributedDataParallel when several workers run.

    Detectron2's ``create_ddp_model`` always passes ``device_ids``, which DDP rejects for CPU
    modules; CPU workers (gloo) are wrapped without them.

    Args:
        model: the model, already on its device.
        fp16_compression: compress gradients to fp16 for the all-reduce (CUDA only).
        kwargs: other DistributedDataParallel arguments (``broadcast_buffers``, ...).
    """
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).device.type == "cuda":
        return create_ddp_model(model, fp16_compression=fp16_compression, **kwargs)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, **kwargs)


def load_eval_checkpoint(model, output_dir: str, checkpoint: str, *, resume: bool, key: str) -> None:
    """Load the checkpoint that ``--eval-only`` evaluates into ``model``, strictly.

    A checkpoint of another detector (or with other classes) is an error naming the keys, not an
    evaluation of randomly initialized heads.

    Args:
        model: the detector.
        output_dir: the training output folder.
        checkpoint: the checkpoint given in the config ("" when none).
        resume: evaluate the checkpoint that ``last_checkpoint`` in ``output_dir`` names, if any.
        key: the config key of ``checkpoint``, for the error message.
    """
    last = AtomicCheckpointer(model, output_dir)
    if resume and last.has_checkpoint():
        checkpoint = last.get_checkpoint_file()
    elif not checkpoint:
        raise ValueError(f"--eval-only needs a checkpoint: {key}=PATH (or --resume)")
    load_detector_checkpoint(model, checkpoint)


def write_eval_results(results: Dict[str, Any], output_dir: str, filename: str = "eval_results.json") -> Optional[str]:
    """Save evaluation results as JSON in ``output_dir`` (main process only); return the path."""
    if not comm.is_main_process() or not output_dir:
        return None
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, filename)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    logger.info("Evaluation results written to %s", path)
    return path


def do_test(cfg, model) -> Dict[str, Any]:
    """Run COCO evaluation of ``model`` on ``dataloader.test``; returns the results dict."""
    if "evaluator" not in cfg.dataloader:
        return {}
    evaluator_cfg = cfg.dataloader.evaluator
    if "output_dir" not in evaluator_cfg or not evaluator_cfg.output_dir:
        evaluator_cfg.output_dir = os.path.join(cfg.train.output_dir, "inference")
    test_loader = ignore_stop_signals_in_workers(instantiate(cfg.dataloader.test))
    results = inference_on_dataset(model, test_loader, instantiate(evaluator_cfg))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def do_train(cfg, *, resume: bool) -> None:
    """Train ``cfg.model`` with periodic checkpoints and evaluation, metrics and TensorBoard.

    Args:
        cfg: a LazyConfig with model, dataloader, optimizer, lr_multiplier and train.
        resume: continue from ``last_checkpoint`` in ``train.output_dir`` when there is one.
    """
    with user_input_stage():  # bad config values, data sets or checkpoints: one line, exit 2
        model = instantiate(cfg.model).to(cfg.train.device)
        logger.info("Model:\n%s", model)
        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)
        train_loader = ignore_stop_signals_in_workers(instantiate(cfg.dataloader.train))

        model = wrap_ddp(model, **cfg.train.ddp)
        trainer = build_trainer(model, train_loader, optimizer, amp=cfg.train.amp.enabled)
        metadata = ModelMetadataState(training_model_metadata(cfg))  # class names, saved with the weights
        checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, trainer=trainer, metadata=metadata)
        clip = cfg.train.get("clip_grad", {}) or {}
        trainer.register_hooks(
            [
                hooks.IterationTimer(),
                hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
                GradientClipHook(clip["max_norm"], clip.get("norm_type", 2.0)) if clip.get("enabled") else None,
                CheckpointOnSignalHook(checkpointer),
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
                hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
                hooks.PeriodicWriter(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period
                )
                if comm.is_main_process()
                else None,
            ]
        )
        if comm.is_main_process():
            remove_stale_temporary_files(cfg.train.output_dir)
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # A checkpoint stores the iteration that just finished: start at the next one.
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    if start_iter >= cfg.train.max_iter:
        logger.info("Nothing to train: the checkpoint is at iteration %d of %d", start_iter, cfg.train.max_iter)
        return
    try:
        trainer.train(start_iter, cfg.train.max_iter)
    except NonFiniteLossError:
        raise
    except FloatingPointError as e:  # Detectron2's own divergence checks (e.g. NaN boxes)
        raise NonFiniteLossError(f"training diverged at iteration {trainer.iter}: {e}") from e
