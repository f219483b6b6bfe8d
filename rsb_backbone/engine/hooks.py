"""Training hooks: gradient clipping, and checkpoint-then-exit on SIGTERM/SIGINT."""

import logging
import signal
from typing import Optional

import torch

from detectron2.engine import HookBase
from detectron2.utils import comm

logger = logging.getLogger(__name__)

__all__ = ["GradientClipHook", "CheckpointOnSignalHook", "TrainingInterrupted"]


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after the checkpoint is saved when a stop signal arrived during training.

    Attributes:
        signum: the signal that stopped training.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class GradientClipHook(HookBase):
    """Clip the global gradient norm after each backward pass.

    Works with :class:`AMPTrainer` too: the gradients are unscaled before clipping.
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0):
        """
        Args:
            max_norm: largest allowed norm of all gradients together.
            norm_type: p of the p-norm (2.0: Euclidean; ``inf``: largest absolute value).
        """
        if max_norm <= 0:
            raise ValueError(f"clip_grad.max_norm={max_norm}: expected a positive number")
        self.max_norm = max_norm
        self.norm_type = norm_type

    def after_backward(self):
        grad_scaler = getattr(self.trainer, "grad_scaler", None)
        if grad_scaler is not None and grad_scaler.is_enabled():
            grad_scaler.unscale_(self.trainer.optimizer)
        params = [
            p for group in self.trainer.optimizer.param_groups for p in group["params"] if p.grad is not None
        ]
        total_norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type)
        self.trainer.storage.put_scalar("grad_norm", float(total_norm), smoothing_hint=True)


class CheckpointOnSignalHook(HookBase):
    """On SIGTERM or SIGINT, finish the current iteration, save a checkpoint, then stop.

    The checkpoint is named ``model_{iteration:07d}`` like periodic ones, so ``--resume`` picks it
    up. Only the main process writes; every process stops.
    """

    def __init__(self, checkpointer, signals=(signal.SIGTERM, signal.SIGINT)):
        """
        Args:
            checkpointer: a Detectron2 checkpointer whose ``save`` writes the training state.
            signals: the signals that request a stop.
        """
        self._checkpointer = checkpointer
        self._signals = tuple(signals)
        self._received: Optional[int] = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self._received is None:
            logger.warning("Received %s: saving a checkpoint after this iteration, then stopping",
                           signal.Signals(signum).name)
        self._received = signum

    def before_train(self):
        for sig in self._signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def after_step(self):
        if self._received is None:
            return
        iteration = self.trainer.iter
        if comm.is_main_process():
            self._checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
        comm.synchronize()
        name = signal.Signals(self._received).name
        raise TrainingInterrupted(
            f"stopped by {name} after iteration {iteration}; checkpoint saved", self._received
        )

    def after_train(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
