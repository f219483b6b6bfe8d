"""A Detectron2 R-CNN with test instruments, selected from the command line of train_net.py:

    model._target_=fault_injection.InstrumentedRCNN +model.nan_process=1 +model.nan_from_iteration=2
    model._target_=fault_injection.InstrumentedRCNN +model.weights_dir=DIR
    model._target_=fault_injection.InstrumentedRCNN +model.fail_at_iteration=1

(with this folder on PYTHONPATH, which the spawned training processes inherit).
"""

import os

import torch

from detectron2.modeling import GeneralizedRCNN
from detectron2.utils import comm


class InstrumentedRCNN(GeneralizedRCNN):
    """:class:`GeneralizedRCNN` that can turn a loss NaN on one process and save each process's
    weights whenever it switches to evaluation.

    Args:
        nan_process: the rank whose ``loss_cls`` becomes NaN (-1: none).
        nan_from_iteration: the first training iteration (0-based) with the NaN loss.
        weights_dir: where to save ``process{rank}.pth`` (the state dict) on each ``eval()``.
        fail_at_iteration: the training iteration that raises a ValueError, as a bug deep in
            training would (-1: none).
        kwargs: :class:`GeneralizedRCNN`'s arguments.
    """

    def __init__(
        self, *, nan_process: int = -1, nan_from_iteration: int = 0, weights_dir: str = "",
        fail_at_iteration: int = -1, **kwargs
    ):
        super().__init__(**kwargs)
        self.fail_at_iteration = fail_at_iteration
        self.nan_process = nan_process
        self.nan_from_iteration = nan_from_iteration
        self.weights_dir = weights_dir
        self.training_calls = 0

    def forward(self, batched_inputs):
        outputs = super().forward(batched_inputs)
        if self.training:
            iteration = self.training_calls
            self.training_calls += 1
            if iteration == self.fail_at_iteration:
                raise ValueError(f"instrumented failure at iteration {iteration}")
            if comm.get_rank() == self.nan_process and iteration >= self.nan_from_iteration:
                outputs["loss_cls"] = outputs["loss_cls"] * float("nan")
        return outputs

    def train(self, mode: bool = True):
        if not mode and self.weights_dir:
            os.makedirs(self.weights_dir, exist_ok=True)
            state = {k: v.detach().clone() for k, v in self.state_dict().items()}
            torch.save(state, os.path.join(self.weights_dir, f"process{comm.get_rank()}.pth"))
        return super().train(mode)
