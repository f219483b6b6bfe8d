"""Detectron2 trainers that stop with a clear message when a loss stops being finite."""

import logging

import torch

from detectron2.engine import AMPTrainer, SimpleTrainer

logger = logging.getLogger(__name__)

__all__ = ["NonFiniteLossError", "build_trainer"]


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite; raised before the optimizer step."""


class _FiniteLossCheck:
    """Checks every loss before metrics are written, which happens before ``optimizer.step``,
    so the weights of the failing iteration are never updated."""

    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):
        bad = {k: float(v) for k, v in loss_dict.items() if not torch.isfinite(v).all()}
        if bad:
            iteration = self.iter if iter is None else iter
            values = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise NonFiniteLossError(f"loss became non-finite at iteration {iteration}: {values}")
        super()._write_metrics(loss_dict, data_time, prefix=prefix, iter=iter)


class CheckedSimpleTrainer(_FiniteLossCheck, SimpleTrainer):
    """:class:`SimpleTrainer` with the finite-loss check."""


class CheckedAMPTrainer(_FiniteLossCheck, AMPTrainer):
    """:class:`AMPTrainer` with the finite-loss check."""


def build_trainer(model, data_loader, optimizer, *, amp: bool):
    """Return the trainer for ``model``: mixed precision (CUDA only) or fp32.

    Args:
        model: the (possibly DDP-wrapped) model in training mode.
        data_loader: an iterable of training batches.
        optimizer: the optimizer.
        amp: use :class:`AMPTrainer` (requires CUDA).
    """
    if amp:
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"train.amp.enabled=True needs a CUDA model; this one is on {device}")
        return CheckedAMPTrainer(model, data_loader, optimizer)
    return CheckedSimpleTrainer(model, data_loader, optimizer)
