"""Detectron2 trainers that stop with a clear message when a loss stops being finite."""

import logging

import torch

from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm

from .outcomes import NonFiniteLossError
from .stop_signals import max_over_processes

logger = logging.getLogger(__name__)

__all__ = ["build_trainer"]


class _FiniteLossCheck:
    """Checks every loss before metrics are written, which happens before ``optimizer.step``,
    so the weights of the failing iteration are never updated.

    The processes agree on the result: when a loss is not finite on one of them, every process
    raises :class:`NonFiniteLossError` at the same iteration, instead of the others waiting for it
    in the next collective until the timeout.
    """

    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):
        bad = {k: float(v) for k, v in loss_dict.items() if not torch.isfinite(v).all()}
        if max_over_processes(int(bool(bad))):
            iteration = self.iter if iter is None else iter
            raise NonFiniteLossError(f"loss became non-finite at iteration {iteration}: {_describe(bad)}")
        super()._write_metrics(loss_dict, data_time, prefix=prefix, iter=iter)


def _describe(local_bad) -> str:
    if comm.get_world_size() == 1:
        return ", ".join(f"{k}={v}" for k, v in local_bad.items())
    parts = []
    for rank, bad in enumerate(comm.all_gather(local_bad)):
        if bad:
            parts.append(", ".join(f"{k}={v}" for k, v in bad.items()) + f" (process {rank})")
    return "; ".join(parts)


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
