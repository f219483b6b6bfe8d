"""Training hook for gradient clipping (the stop-signal hook is in ``stop_signals``)."""

import logging

import torch

from detectron2.engine import HookBase

logger = logging.getLogger(__name__)

__all__ = ["GradientClipHook"]


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
