"""One agreed stop on SIGTERM/SIGINT, or on SLURM's time-limit signal, whichever processes of a
job receive the signal (docs/failure_behaviour.md, docs/slurm.md): the launcher forwards it
(:func:`forward_stop_signals`), the training processes agree in every iteration
(:class:`CheckpointOnSignalHook`; the loss check's collective carries it), and DataLoader workers ignore it
(:func:`ignore_stop_signals_in_workers`) so that it cannot crash the data loader.
"""

import contextlib
import functools
import logging
import multiprocessing
import os
import signal
from typing import Callable, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from detectron2.engine import HookBase
from detectron2.utils import comm

from .outcomes import TrainingInterrupted

logger = logging.getLogger(__name__)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def max_over_processes(value: int) -> int:
    """The largest ``value`` over all training processes; a collective (all must call it)."""
    return max_each_over_processes([value])[0]


def max_each_over_processes(values: Sequence[int]) -> List[int]:
    """For each position of ``values``, the largest value over all training processes; one
    collective for all of them (all processes must call it with as many values)."""
    if comm.get_world_size() == 1:
        return list(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # "cuda": the current device
    tensor = torch.tensor(list(values), dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [int(v) for v in tensor.tolist()]


def pending_stop_signal() -> int:
    """The stop signal this process received and training has not acted on yet; 0 if none."""
    return _received["signum"]


# The first stop signal this process received and the training loop has not yet acted on.
_received = {"signum": 0}
# The stop signals and the signal of :func:`recording_signal`: launchers forward them, DataLoader
# workers ignore them (SLURM signals every process of a job step, workers included).
_handled_signals = set(STOP_SIGNALS)


def _record_outside_training(signum, frame):
    if not _received["signum"]:
        logger.warning(
            "Received %s outside the training loop: training, if it has iterations left, stops after "
            "its next one with a checkpoint",
            signal.Signals(signum).name,
        )
    _received["signum"] = _received["signum"] or signum


@contextlib.contextmanager
def recording_signal(signum: Optional[int]) -> Iterator[None]:
    """Within this block, ``signum`` (SLURM's time-limit signal) does not end the process outside
    the training loop: it is noted, and the loop's :class:`CheckpointOnSignalHook` acts on it.
    After the block the process ignores it: a run that has ended does not die of it on its way out.

    Args:
        signum: the signal; None: nothing changes.
    """
    if signum is None:
        yield
        return
    signal.signal(signum, _record_outside_training)
    _handled_signals.add(signum)
    try:
        yield
    finally:
        _handled_signals.discard(signum)
        signal.signal(signum, signal.SIG_IGN)


class CheckpointOnSignalHook(HookBase):
    """On SIGTERM, SIGINT or the requeue signal to any process, all finish the same iteration (they
    agree after each), the main process saves ``model_{iteration:07d}`` for ``--resume``, and all
    raise :class:`TrainingInterrupted`. After the requeue signal the main process first requeues
    the SLURM job (``requeue``), once the checkpoint is on disk, and all report what it did.

    Args:
        checkpointer: a Detectron2 checkpointer whose ``save`` writes the training state.
        requeue: requeues the job and says how (:class:`~.slurm.SlurmRequeue`); None outside SLURM.
    """

    def __init__(self, checkpointer, requeue: Optional[Callable[[], str]] = None):
        self._checkpointer = checkpointer
        self._requeue = requeue
        self._signals = STOP_SIGNALS + ((requeue.signum,) if requeue is not None else ())
        self._previous = {}

    def _handle(self, signum, frame):
        if not _received["signum"]:
            logger.warning(
                "Received %s: saving a checkpoint after this iteration, then stopping",
                signal.Signals(signum).name,
            )
        _received["signum"] = _received["signum"] or signum

    def before_train(self):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self._signals}

    def after_step(self):
        # A trainer that already agreed on the signal in this iteration's collective (the loss check
        # of rsb_backbone.engine.training) leaves it in agreed_stop_signal: no second collective.
        signum = getattr(self.trainer, "agreed_stop_signal", None)
        self.trainer.agreed_stop_signal = None
        if signum is None:
            signum = max_over_processes(_received["signum"])
        if not signum:
            return
        iteration = self.trainer.iter
        if comm.is_main_process():
            self._checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
        comm.synchronize()
        _received["signum"] = 0
        message = f"stopped by {signal.Signals(signum).name} after iteration {iteration}; checkpoint saved"
        if self._requeue is None or signum != self._requeue.signum:
            raise TrainingInterrupted(message, signum)
        # The requeue ends every process of the job with SIGTERM: each one finishes its report first.
        self._previous.pop(signal.SIGTERM, None)
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        notes = [self._requeue() if comm.is_main_process() else None]
        if comm.get_world_size() > 1:
            dist.broadcast_object_list(notes, src=0)
        raise TrainingInterrupted(message, signum, next_step=notes[0])

    def after_train(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _ignore_stop_signals(signals: Sequence[int], worker_init_fn, worker_id: int) -> None:
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)
    if worker_init_fn is not None:  # the loader's own (Detectron2 seeds each worker there)
        worker_init_fn(worker_id)


def ignore_stop_signals_in_workers(loader):
    """Make the DataLoader worker processes of ``loader`` ignore SIGTERM, SIGINT and the requeue
    signal (:func:`recording_signal`); call it before the loader is first iterated, and
    :func:`stop_data_loader_workers` when a run ends.

    Args:
        loader: a ``torch.utils.data.DataLoader``, or a Detectron2 loader wrapping one.

    Returns:
        ``loader``.
    """
    data_loader = loader
    # Detectron2 wraps a DataLoader in AspectRatioGroupedDataset (``dataset``), MapDataset (``_dataset``).
    while data_loader is not None and not isinstance(data_loader, DataLoader):
        inner = getattr(data_loader, "dataset", None)
        data_loader = inner if inner is not None else getattr(data_loader, "_dataset", None)
    if data_loader is None:
        logger.debug("No torch DataLoader found in %s: its workers keep their signal handlers", type(loader))
    elif getattr(data_loader.worker_init_fn, "func", None) is not _ignore_stop_signals:
        data_loader.worker_init_fn = functools.partial(
            _ignore_stop_signals, tuple(sorted(_handled_signals)), data_loader.worker_init_fn
        )
    return loader


def stop_data_loader_workers() -> None:
    """Kill this process's DataLoader workers (its daemonic children) when a run ends: they ignore
    the SIGTERM with which ``multiprocessing`` stops them at exit, and it would wait forever."""
    workers = [child for child in multiprocessing.active_children() if child.daemon]
    if not workers:
        return
    # PyTorch's SIGCHLD handler would report each killed worker as a failure of its loader.
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.join(timeout=5)
    finally:
        signal.signal(signal.SIGCHLD, previous)


@contextlib.contextmanager
def forward_stop_signals() -> Iterator[List[int]]:
    """In a launcher process: pass SIGTERM/SIGINT (and the requeue signal) on to the training
    processes it started (so that they stop together after a checkpoint instead of running on);
    yields the signals received."""
    received = []

    def forward(signum, frame):
        received.append(signum)
        children = multiprocessing.active_children()
        name = signal.Signals(signum).name
        logger.warning("Received %s: passing it to %d training processes", name, len(children))
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in sorted(_handled_signals)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
