"""Training and evaluation loops for LazyConfigs (what the training entry point runs in each process), with
the trainers' finite-loss check and gradient clipping."""

import json
import logging
import os
import time
from typing import Any, Dict, Optional

import torch

from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, HookBase, SimpleTrainer, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.events import EventWriter, JSONWriter

from ..checkpoint.detection_checkpoint import AtomicCheckpointer, load_detector_checkpoint
from ..checkpoint.model_metadata import ModelMetadataState, training_model_metadata
from ..config import check_masks_for_mask_models, dataset_names
from ..data.coco_registration import check_registered_sets, nothing_to_train_on
from ..utils.errors import OutputWriteError
from ..utils.file_io import atomic_write_bytes, remove_stale_temporary_files
from ..utils.mixed_precision import autocast, in_precision, training_precision
from .outcomes import NonFiniteLossError, user_input_stage
from .slurm import SlurmRequeue, describe_job, slurm_job
from .stop_signals import (
    CheckpointOnSignalHook,
    ignore_stop_signals_in_workers,
    max_each_over_processes,
    pending_stop_signal,
)
from .watchdog import DEFAULT_WATCHDOG_S, TrainingWatchdog

logger = logging.getLogger(__name__)


class GradientClipHook(HookBase):
    """Clip the global gradient norm after each backward pass (unscaled first under AMP).

    Args:
        max_norm: largest allowed norm of all gradients together.
        norm_type: p of the p-norm (2.0: Euclidean; ``inf``: largest absolute value).
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0):
        if max_norm <= 0:
            raise ValueError(f"clip_grad.max_norm={max_norm}: expected a positive number")
        self.max_norm = max_norm
        self.norm_type = norm_type

    def after_backward(self):
        grad_scaler = getattr(self.trainer, "grad_scaler", None)
        if grad_scaler is not None and grad_scaler.is_enabled():
            grad_scaler.unscale_(self.trainer.optimizer)
        # clip_grad_norm_ skips parameters without a gradient.
        params = [p for group in self.trainer.optimizer.param_groups for p in group["params"]]
        total_norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type)
        self.trainer.storage.put_scalar("grad_norm", float(total_norm), smoothing_hint=True)


class _FiniteLossCheck:
    """Checks every loss before metrics are written, which is before ``optimizer.step``, so the
    failing iteration's update is never applied. It overrides Detectron2's private
    ``SimpleTrainer._write_metrics``: no public hook sees the loss dict before the optimizer step. The processes agree on the result, so all raise
    :class:`NonFiniteLossError` at the same iteration instead of waiting for the collective timeout.
    The same collective agrees on a pending stop signal, which :class:`CheckpointOnSignalHook` reads
    from ``agreed_stop_signal`` after the step: one collective per iteration for both."""

    agreed_stop_signal = None

    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):
        bad = {k: float(v) for k, v in loss_dict.items() if not torch.isfinite(v).all()}
        any_bad, self.agreed_stop_signal = max_each_over_processes([int(bool(bad)), pending_stop_signal()])
        if any_bad:
            suffix = " (process {})" if comm.get_world_size() > 1 else ""
            described = "; ".join(
                ", ".join(f"{k}={v}" for k, v in losses.items()) + suffix.format(rank)
                for rank, losses in enumerate(comm.all_gather(bad))
                if losses
            )
            iteration = self.iter if iter is None else iter
            raise NonFiniteLossError(f"loss became non-finite at iteration {iteration}: {described}")
        super()._write_metrics(loss_dict, data_time, prefix=prefix, iter=iter)


class _CheckedSimpleTrainer(_FiniteLossCheck, SimpleTrainer):
    pass


class _CheckedAMPTrainer(_FiniteLossCheck, AMPTrainer):
    """Detectron2's ``AMPTrainer`` for CUDA and the CPU: its ``run_step`` enters
    ``torch.cuda.amp.autocast``, this one ``torch.autocast`` of the model's device type. The gradient
    scaler is on for float16 only (bfloat16 has float32's range). A checkpoint of a run in another
    precision resumes: its scaler state, if any, is used only by float16.

    Args:
        model, data_loader, optimizer: as for ``SimpleTrainer``.
        device: the model's device.
        precision: torch.float16 (CUDA) or torch.bfloat16.
    """

    def __init__(self, model, data_loader, optimizer, *, device: str, precision: torch.dtype):
        self.device_type = torch.device(device).type
        grad_scaler = torch.amp.GradScaler(self.device_type, enabled=precision == torch.float16)
        super().__init__(model, data_loader, optimizer, grad_scaler=grad_scaler, precision=precision)

    def run_step(self):
        assert self.model.training, "the model was put in eval mode during training"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with autocast(self.device_type, self.precision):
            loss_dict = self.model(data)
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)  # checks the losses before the update
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def load_state_dict(self, state_dict):
        SimpleTrainer.load_state_dict(self, state_dict)
        scaler_state = state_dict.get("grad_scaler") or {}  # {}: saved by a disabled scaler
        if self.grad_scaler.is_enabled() and scaler_state:
            self.grad_scaler.load_state_dict(scaler_state)
        elif self.grad_scaler.is_enabled():
            logger.info(
                "The checkpoint has no float16 loss scale (another precision): starting from the initial one"
            )


def wrap_ddp(model, **kwargs):
    """Detectron2's ``create_ddp_model`` (DistributedDataParallel when several processes run), also
    for CPU modules, for which DDP rejects ``device_ids``.

    Args:
        model: the model, already on its device.
        kwargs: ``fp16_compression`` (ignored on CPU) and DistributedDataParallel arguments.
    """
    if next(model.parameters()).device.type != "cuda":
        kwargs.update(device_ids=None, fp16_compression=False)
    return create_ddp_model(model, **kwargs)


def load_eval_checkpoint(
    model, output_dir: str, checkpoint: str, *, resume: bool, key: str = "train.init_checkpoint"
) -> None:
    """Load the checkpoint that ``--eval-only`` evaluates into ``model``, strictly (another
    detector's checkpoint is an error naming the keys).

    Args:
        model: the detector.
        output_dir: the training output folder.
        checkpoint: the checkpoint given in the config ("" when none).
        resume: evaluate the checkpoint that ``last_checkpoint`` in ``output_dir`` names, if any.
        key: the config key of ``checkpoint``, for the error message (by default the LazyConfigs').
    """
    last = AtomicCheckpointer(model, output_dir)
    if resume and last.has_checkpoint():
        checkpoint = last.get_checkpoint_file()
    elif not checkpoint:
        raise ValueError(f"--eval-only needs a checkpoint: {key}=PATH (or --resume)")
    load_detector_checkpoint(model, checkpoint)


def write_eval_results(results: Dict[str, Any], output_dir: str) -> None:
    """Save evaluation results as ``eval_results.json`` in ``output_dir`` (main process only),
    atomically (:func:`~rsb_backbone.utils.file_io.atomic_write_bytes`)."""
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "eval_results.json")
        atomic_write_bytes(path, json.dumps(results, indent=2).encode())
        logger.info("Evaluation results written to %s", path)


class _FileNamingWriter(EventWriter):
    """Detectron2's :class:`JSONWriter` (``metrics.json``, appended to) whose failed write, e.g. on a
    full disk, names the file (:class:`OutputWriteError`) instead of a bare OSError; after that it
    writes nothing more, so that the first error is the one reported."""

    def __init__(self, writer: JSONWriter):
        self._writer = writer
        self._failed = False

    def write(self):
        if self._failed:
            return
        try:
            self._writer.write()
        except OSError as e:
            self._failed = True
            raise OutputWriteError(self._writer._file_handle.name, e) from e

    def close(self):
        try:
            self._writer.close()
        except OSError:
            if not self._failed:
                raise


def _training_writers(output_dir: str, max_iter: int):
    """Detectron2's default writers, ``metrics.json``'s naming its file when a write fails."""
    writers = default_writers(output_dir, max_iter)
    return [_FileNamingWriter(w) if isinstance(w, JSONWriter) else w for w in writers]


def do_test(cfg, model) -> Dict[str, Any]:
    """Run COCO evaluation of ``model`` on ``dataloader.test`` (in ``train.amp``'s precision when it is
    enabled, with float32 outputs); returns the results dict."""
    if "evaluator" not in cfg.dataloader:
        return {}
    model = in_precision(model, cfg.train.device, training_precision(cfg.train))
    if not cfg.dataloader.evaluator.get("output_dir"):
        cfg.dataloader.evaluator.output_dir = os.path.join(cfg.train.output_dir, "inference")
    test_loader = ignore_stop_signals_in_workers(instantiate(cfg.dataloader.test))
    results = inference_on_dataset(model, test_loader, instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def do_train(cfg, *, resume: bool, requeue: Optional[SlurmRequeue] = None) -> None:
    """Train ``cfg.model`` with periodic checkpoints and evaluation, metrics and TensorBoard; the
    final evaluation's results go to ``eval_results.json`` in ``train.output_dir``.

    Args:
        cfg: a LazyConfig with model, dataloader, optimizer, lr_multiplier and train.
        resume: continue from ``last_checkpoint`` in ``train.output_dir`` when there is one. A
            completed run whose final evaluation did not finish (its job's time ran out) evaluates.
        requeue: under SLURM, what requeues the job after its time-limit signal.
    """
    with user_input_stage():  # bad config values, data sets or checkpoints: one line, exit 2
        model = instantiate(cfg.model).to(cfg.train.device)
        logger.info("Model:\n%s", model)
        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)
        try:
            train_loader = ignore_stop_signals_in_workers(instantiate(cfg.dataloader.train))
        except AssertionError as e:  # Detectron2's check that the training set is not empty
            raise nothing_to_train_on(e, cfg.dataloader.train.dataset.names) or e
        # Registered sets are parsed and checked at their first load: the training set's was just
        # now; the evaluation sets' comes before training too, so that their errors do.
        if "test" in cfg.dataloader:
            check_registered_sets(dataset_names(cfg.dataloader.test.dataset.names))
        check_masks_for_mask_models(cfg, training=True)  # the loads above know which sets have masks

        precision = training_precision(cfg.train)
        model = wrap_ddp(model, **cfg.train.ddp)
        if precision is None:
            trainer = _CheckedSimpleTrainer(model, train_loader, optimizer)
        else:
            logger.info("Mixed precision training in %s", precision)
            trainer = _CheckedAMPTrainer(
                model, train_loader, optimizer, device=cfg.train.device, precision=precision
            )
        evaluations = []  # every evaluation's results: the last is the final one once training is done
        watchdog = TrainingWatchdog(cfg.train.get("watchdog_s", DEFAULT_WATCHDOG_S), requeue)

        @watchdog.pausing  # evaluations and checkpoint saves are not stalls
        def evaluate():
            evaluations.append(do_test(cfg, model))
            return evaluations[-1]

        metadata = ModelMetadataState(training_model_metadata(cfg))  # class names, saved with the weights
        checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, trainer=trainer, metadata=metadata)
        checkpointer.save = watchdog.pausing(checkpointer.save)
        clip = cfg.train.get("clip_grad", {}) or {}
        main_process = comm.is_main_process()
        trainer.register_hooks(
            [
                watchdog,  # first: its after_step marks the end of the iteration's work
                hooks.IterationTimer(),
                hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
                (
                    GradientClipHook(clip["max_norm"], clip.get("norm_type", 2.0))
                    if clip.get("enabled")
                    else None
                ),
                CheckpointOnSignalHook(checkpointer, requeue),
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main_process else None,
                hooks.EvalHook(cfg.train.eval_period, evaluate),
                (
                    hooks.PeriodicWriter(
                        _training_writers(cfg.train.output_dir, cfg.train.max_iter),
                        period=cfg.train.log_period,
                    )
                    if main_process
                    else None
                ),
            ]
        )
        if main_process:
            remove_stale_temporary_files(cfg.train.output_dir)
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # A checkpoint stores the iteration that just finished: start at the next one.
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    if start_iter:
        job = slurm_job()
        logger.info(
            "Resuming at iteration %d of %d from %s%s",
            start_iter,
            cfg.train.max_iter,
            checkpointer.get_checkpoint_file(),
            f" ({describe_job(job)})" if job else "",
        )
    if start_iter >= cfg.train.max_iter:
        results_file = os.path.join(cfg.train.output_dir, "eval_results.json")
        if cfg.train.eval_period > 0 and not os.path.exists(results_file):
            logger.info("Training is complete but its final evaluation is missing: evaluating")
            write_eval_results(do_test(cfg, model), cfg.train.output_dir)
        else:
            logger.info(
                "Nothing to train: the checkpoint is at iteration %d of %d", start_iter, cfg.train.max_iter
            )
        return
    try:
        trainer.train(start_iter, cfg.train.max_iter)
    except NonFiniteLossError:
        raise
    except FloatingPointError as e:  # Detectron2's own divergence checks (e.g. NaN boxes)
        raise NonFiniteLossError(f"training diverged at iteration {trainer.iter}: {e}") from e
    if evaluations:
        write_eval_results(evaluations[-1], cfg.train.output_dir)
