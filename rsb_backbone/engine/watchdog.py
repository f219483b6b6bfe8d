"""A training job cannot hang (docs/failure_behaviour.md, "A stalled process"): when no iteration
has finished for ``train.watchdog_s`` seconds on a process (a rank stuck in a file system read, a
frozen node, a collective waiting for either), the process writes the Python stack of each of its
threads to stderr and ends with :data:`~.outcomes.STALLED_EXIT_CODE`, instead of waiting for the
collective timeout (30 minutes). Every live process of a stalled job detects it: the others wait
in the next collective, so their iterations stop too. Under SLURM the main process first requeues
the job as after a time limit (counted), and the job resumes from the newest checkpoint.

The watchdog runs in a thread because a process that stalls is stuck in C code (a ``read``, a
gloo or NCCL wait) that no Python exception can interrupt.
"""

import contextlib
import faulthandler
import functools
import logging
import os
import socket
import sys
import threading
import time
from typing import Callable, Iterator, Optional

from detectron2.engine import HookBase
from detectron2.utils import comm

from .outcomes import STALLED_EXIT_CODE, RunOutcome

logger = logging.getLogger(__name__)

# train.watchdog_s when a config has none: well above an iteration plus a checkpoint save of the
# largest model here (a 3x Cascade R-152 iteration takes about 2 s on a GPU, its save about 30 s).
DEFAULT_WATCHDOG_S = 900.0
# After a process detects the stall it waits this fraction of watchdog_s (10 to 20 s) before it
# ends, so that the other stalled processes, whose clocks started up to an iteration later, write
# their stacks before its end breaks their collectives: process 0's clock restarts after each
# checkpoint save it writes, while the others' do not wait for it (a save of a few hundred MB takes
# seconds on a busy disk). Under 30 s: torch's launcher kills the processes 30 s after the first
# one ends.
_GRACE_FRACTION, _MIN_GRACE_S, _MAX_GRACE_S = 0.1, 10.0, 20.0


def _print_outcome(outcome: RunOutcome) -> None:
    # The entry point prints "PROGRAM: message"; argparse's program name is sys.argv[0]'s base name.
    print(f"{os.path.basename(sys.argv[0])}: {outcome.message}", file=sys.stderr, flush=True)


# What a stalled process does with its outcome before it ends: a spawned training process puts
# it on its launcher's queue (:func:`reporting_outcomes_to`); any other process prints it.
_report = {"outcome": _print_outcome}
# Set once this process's watchdog fired: an error of a collective that a stalled peer's end then
# breaks is not reported (the watchdog ends the process).
_fired = threading.Event()


@contextlib.contextmanager
def reporting_outcomes_to(report: Callable[[RunOutcome], None]) -> Iterator[None]:
    """Within this block, a stalled process hands its outcome to ``report`` instead of printing it.

    Args:
        report: e.g. puts ``(rank, outcome)`` on the launcher's queue.
    """
    previous = _report["outcome"]
    _report["outcome"] = report
    try:
        yield
    finally:
        _report["outcome"] = previous


def wait_if_stalled() -> None:
    """Block for good when this process's watchdog has fired: it ends the process itself. Call it
    where an error is handled, so that the error of a collective broken by a stalled job's end is
    not reported as a failure of its own."""
    if _fired.is_set():
        threading.Event().wait()


class TrainingWatchdog(HookBase):
    """Ends a process in which no training iteration has finished for ``timeout_s`` seconds,
    leaving out time spent in checkpoint saves and evaluations (wrap them with :meth:`paused`).

    Register it first among the hooks: its ``after_step`` then marks the end of the iteration's
    work, and its ``after_train`` stops it before the final evaluation.

    Args:
        timeout_s: the stall, in seconds, that ends the process (0: no watchdog).
        requeue: under SLURM, requeues the job and says how (:class:`~.slurm.SlurmRequeue`); the
            main process calls it before it ends.
    """

    def __init__(self, timeout_s: float, requeue: Optional[Callable[[], str]] = None):
        if timeout_s < 0:
            raise ValueError(f"train.watchdog_s={timeout_s}: expected seconds > 0, or 0 for no watchdog")
        self.timeout_s = float(timeout_s)
        self._requeue = requeue
        self._lock = threading.Lock()
        self._last_progress = time.monotonic()
        self._pauses = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last_finished: Optional[int] = None

    def _progress(self) -> None:
        with self._lock:
            self._last_progress = time.monotonic()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time within this block is not a stall (a checkpoint save, an evaluation)."""
        wait_if_stalled()  # a stalled process that comes back (SIGCONT) saves nothing on its way out
        with self._lock:
            self._pauses += 1
        try:
            yield
        finally:
            with self._lock:
                self._pauses -= 1
                self._last_progress = time.monotonic()

    def pausing(self, function: Callable) -> Callable:
        """``function``, with its calls in :meth:`paused`."""

        @functools.wraps(function)
        def paused_call(*args, **kwargs):
            with self.paused():
                return function(*args, **kwargs)

        return paused_call

    def before_train(self):
        if not self.timeout_s:
            return
        self._progress()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="training-watchdog", daemon=True)
        self._thread.start()

    def before_step(self):
        wait_if_stalled()

    def after_step(self):
        wait_if_stalled()  # once the stall is declared, nothing more is trained, saved or logged
        self._last_finished = self.trainer.iter
        self._progress()

    def after_train(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _stalled_for(self) -> float:
        with self._lock:
            return 0.0 if self._pauses else time.monotonic() - self._last_progress

    def _watch(self) -> None:
        while not self._stop.wait(min(5.0, self.timeout_s / 10)):
            if self._stalled_for() >= self.timeout_s:
                self._end_stalled_process()

    def _end_stalled_process(self) -> None:
        _fired.set()
        rank = comm.get_rank()
        finished = (
            "none yet" if self._last_finished is None else f"the last was iteration {self._last_finished}"
        )
        header = (
            f"Process {rank} on {socket.gethostname()}: no training iteration finished for "
            f"{self.timeout_s:g} s ({finished}); the stack of each of its threads:"
        )
        logger.error(header)  # to log.txt; the stack goes to stderr, which every process shares with its job
        sys.stderr.write(header + "\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        next_step = "continue with --resume"
        if self._requeue is not None:
            next_step = (
                self._requeue()  # counted like a time limit; this process ignores the SIGTERM it brings
                if comm.is_main_process()
                else "process 0 requeues the SLURM job unless it stalled itself; otherwise continue with --resume"
            )
        outcome = RunOutcome(
            STALLED_EXIT_CODE,
            f"error: training stalled: no iteration finished for {self.timeout_s:g} s ({finished}; "
            f"train.watchdog_s); the stack of every live process is in the log; the newest checkpoint is "
            f"kept; {next_step}",
        )
        grace = min(_MAX_GRACE_S, max(_MIN_GRACE_S, _GRACE_FRACTION * self.timeout_s))
        try:
            if (
                comm.is_main_process()
            ):  # its line first: the others' ends may end it (srun --kill-on-bad-exit)
                _report["outcome"](outcome)
                time.sleep(grace)
            else:
                time.sleep(grace)
                _report["outcome"](outcome)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(outcome.exit_code)
