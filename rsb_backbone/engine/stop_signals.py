"""One agreed stop on SIGTERM/SIGINT, whichever processes of a job receive the signal.

A cluster scheduler (SLURM on preemption, time limit or ``scancel``; ``kill -TERM -- -PGID``)
signals the whole process group: the launcher, every training process and their DataLoader
workers. Ctrl-C does the same with SIGINT. Other tools signal one process only. Whatever the
subset:

- the launcher forwards the signal to its training processes (:func:`forward_stop_signals`);
- each training process records it, and after every iteration the processes agree (a max
  all-reduce) whether any of them got one, so all stop after the same iteration; the main
  process saves a checkpoint first (:class:`CheckpointOnSignalHook`);
- DataLoader workers ignore the stop signals (:func:`ignore_stop_signals_in_workers`): their
  training process shuts them down as it exits. Otherwise a worker killed by the signal turns the
  stop request into a crash of the data loader, before any checkpoint is written.
"""

import contextlib
import logging
import multiprocessing
import os
import signal
from typing import Callable, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from detectron2.engine import HookBase
from detectron2.utils import comm

from .outcomes import TrainingInterrupted

logger = logging.getLogger(__name__)

__all__ = [
    "STOP_SIGNALS",
    "CheckpointOnSignalHook",
    "forward_stop_signals",
    "ignore_stop_signals_in_workers",
    "max_over_processes",
    "stop_data_loader_workers",
]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def max_over_processes(value: int) -> int:
    """The largest ``value`` over all training processes (``value`` itself in a single process).

    A collective: every process must call it at the same point.

    Args:
        value: this process's value.
    """
    if comm.get_world_size() == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


class CheckpointOnSignalHook(HookBase):
    """On SIGTERM or SIGINT, finish the current iteration, save a checkpoint, then stop.

    Every process checks after each iteration whether any process received a stop signal, so
    all processes stop after the same iteration even when the signal reached only some of them,
    or reached them a moment apart. The checkpoint is named ``model_{iteration:07d}`` like the
    periodic ones, so ``--resume`` picks it up; only the main process writes it. Every process
    then raises :class:`TrainingInterrupted`.
    """

    def __init__(self, checkpointer, signals=STOP_SIGNALS):
        """
        Args:
            checkpointer: a Detectron2 checkpointer whose ``save`` writes the training state.
            signals: the signals that request a stop.
        """
        self._checkpointer = checkpointer
        self._signals = tuple(signals)
        self._received = 0
        self._previous = {}

    def _handle(self, signum, frame):
        if not self._received:
            logger.warning(
                "Received %s: saving a checkpoint after this iteration, then stopping",
                signal.Signals(signum).name,
            )
        self._received = signum

    def before_train(self):
        for sig in self._signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def after_step(self):
        signum = max_over_processes(self._received)
        if not signum:
            return
        iteration = self.trainer.iter
        if comm.is_main_process():
            self._checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
        comm.synchronize()
        name = signal.Signals(signum).name
        raise TrainingInterrupted(f"stopped by {name} after iteration {iteration}; checkpoint saved", signum)

    def after_train(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class _IgnoreStopSignals:
    """A DataLoader ``worker_init_fn`` that makes the worker ignore the stop signals, then runs
    the loader's own ``worker_init_fn`` (Detectron2 seeds each worker there)."""

    def __init__(self, worker_init_fn: Optional[Callable[[int], None]]):
        self.worker_init_fn = worker_init_fn

    def __call__(self, worker_id: int) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if self.worker_init_fn is not None:
            self.worker_init_fn(worker_id)


def _torch_data_loaders(loader, depth: int = 4) -> List[DataLoader]:
    # Detectron2's loaders are a DataLoader, or wrap one: AspectRatioGroupedDataset keeps it as
    # ``dataset``, MapDataset as ``_dataset``.
    if isinstance(loader, DataLoader):
        return [loader]
    if depth == 0:
        return []
    found = []
    for attribute in ("dataset", "_dataset"):
        inner = getattr(loader, attribute, None)
        if inner is not None:
            found.extend(_torch_data_loaders(inner, depth - 1))
    return found


def stop_data_loader_workers() -> None:
    """Kill the DataLoader worker processes of this process; call it when a run ends.

    Workers that ignore SIGTERM (:func:`ignore_stop_signals_in_workers`) do not answer the
    SIGTERM with which ``multiprocessing`` stops daemonic children when a process exits, and it
    would then wait for them forever. DataLoader workers are the daemonic children of a training
    process (the processes a launcher spawns are not daemonic).
    """
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


def ignore_stop_signals_in_workers(loader):
    """Make the DataLoader worker processes of ``loader`` ignore SIGTERM and SIGINT.

    Call it before the loader is first iterated (workers are started then). Workers still exit
    when their training process shuts them down or dies; when a run ends, call
    :func:`stop_data_loader_workers`.

    Args:
        loader: a ``torch.utils.data.DataLoader``, or a Detectron2 loader wrapping one.

    Returns:
        ``loader``.
    """
    loaders = _torch_data_loaders(loader)
    if not loaders:
        logger.debug("No torch DataLoader found in %s: its workers keep their signal handlers", type(loader))
    for data_loader in loaders:
        if not isinstance(data_loader.worker_init_fn, _IgnoreStopSignals):
            data_loader.worker_init_fn = _IgnoreStopSignals(data_loader.worker_init_fn)
    return loader


@contextlib.contextmanager
def forward_stop_signals(on_signal: Optional[Callable[[int], None]] = None) -> Iterator[None]:
    """In a launcher process: pass SIGTERM/SIGINT on to the training processes it started.

    The training processes then stop together after a checkpoint, and the launcher reports their
    exit code; without this, a launcher killed by the signal would leave them running.

    Args:
        on_signal: called with the signal number each time one arrives.
    """

    def forward(signum, frame):
        if on_signal is not None:
            on_signal(signum)
        children = multiprocessing.active_children()
        logger.warning("Received %s: passing it to %d training processes",
                       signal.Signals(signum).name, len(children))
        for child in children:
            try:
                os.kill(child.pid, signum)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
