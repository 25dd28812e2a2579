"""Stopping a run without losing work: SIGINT, SIGTERM and SIGUSR1 while the engine trains.

Ctrl-C in a terminal and "interrupt the kernel" in Jupyter send SIGINT; a cluster scheduler sends
SIGTERM before it preempts a job (as do ``docker stop`` and ``systemctl stop``), and SLURM sends
SIGUSR1 ahead of a time limit when asked (``#SBATCH --signal=USR1@120``). While ``Trainer.fit``
runs, :class:`StopSignals` catches these and only records them; the engine acts between steps:
the step under way finishes (under torchrun every rank finishes it and the ranks agree to stop at
the same step), a checkpoint is written at the step reached, and ``fit`` raises
:class:`TrainingInterrupted`. The command line prints one line and exits with 128 + the signal's
number (130 for SIGINT, 143 for SIGTERM, 138 for SIGUSR1), as a shell reports a process it stopped.

A second signal only says that the stop is under way. A third, while a step or an evaluation
is still running, gives up at once without saving (the checkpoint on disk stays whole, since every
write is atomic); while the checkpoint is being written, no signal interrupts it.
"""
from __future__ import annotations

import signal
import sys
import threading

import torch
import torch.distributed as dist

from hvae_lib.training.safe_write import WriteError

SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s is not None)
FORCE_AFTER = 3  # signals: the third gives up without saving


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_status(signum: int) -> int:
    """The status a shell reports for a process a signal stopped: 128 + its number."""
    return 128 + int(signum)


class TrainingInterrupted(KeyboardInterrupt):
    """``Trainer.fit`` stopped on a signal after writing a checkpoint at the step reached.

    A KeyboardInterrupt, so that a notebook stops at the interrupted cell (and "run all" stops
    there) as for any interrupt; the trainer stays usable: calling ``fit()`` again resumes exactly.
    """

    def __init__(self, signum: int, step: int, max_steps: int, checkpoint):
        self.signum, self.step, self.max_steps, self.checkpoint = signum, step, max_steps, checkpoint
        super().__init__(f"Stopped by {signal_name(signum)} at step {step} of {max_steps}; {checkpoint} holds "
                         f"that step, and fit() again (or the same command) resumes from it exactly.")

    @property
    def exit_status(self) -> int:
        return exit_status(self.signum)


class StopSignals:
    """While entered, SIGINT/SIGTERM/SIGUSR1 are recorded in ``signum`` instead of stopping the process.

    Handlers can only be installed from the main thread; elsewhere this does nothing (and the
    signals keep their usual effect). The previous handlers come back on exit.
    """

    def __init__(self, announce: bool = True):
        self.announce = announce
        self.signum: int | None = None
        self.count = 0
        self.saving = False  # set while a checkpoint is written: then no signal interrupts
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
            return
        name = signal_name(signum)
        if self.count >= FORCE_AFTER and not self.saving:
            raise KeyboardInterrupt(f"{name} received {self.count} times: stopped at once without saving; the "
                                    f"checkpoint on disk is whole, and this trainer object should be rebuilt.")
        if self.announce:
            left = "" if self.saving else f"; {FORCE_AFTER - self.count} more to stop at once without saving"
            print(f"{name}: already stopping, after this step and its checkpoint{left}.", file=sys.stderr, flush=True)


class StoppedWithRankZero(RuntimeError):
    """A rank > 0 leaves because rank 0 could not write a file of the run (rank 0 says which)."""


class CleanStop:
    """How the engine's :class:`~hvae_lib.training.engine.Trainer` leaves ``fit`` on a signal or a failed write.

    One process acts at once. Under torchrun only rank 0 writes, so only it can fail, and any rank
    may get a signal first: each rank's news travels in the all-reduce every training step makes
    (``_agreed``), so the ranks leave at the same step, and none waits in a collective the others
    never reach. Uses the trainer's ``world``, ``rank``, ``signals``, ``out``, ``step``, ``saved_step``,
    ``_saving_step``, ``_failure``, ``_agreed``, ``device``, ``config`` and ``save``.
    """

    def _stopping(self) -> bool:
        """Leave the loop? One process acts on its own signal or failure; under torchrun the ranks act
        only on what they agreed at the last step, so they stop at the same step."""
        if self.world > 1:
            return bool(self._agreed[0] or self._agreed[1])
        return bool((self.signals is not None and self.signals.requested) or self._failure is not None)

    def _write(self, write, *args) -> None:
        """Run a write; a failure stops one process at once, or waits (rank 0) for the ranks to agree."""
        try:
            write(*args)
        except WriteError as err:
            self._failure = self._failure or err
            if self.world == 1:
                self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is None:
            return
        ckpt = self.out / "checkpoint.pt"
        kept = (f"{ckpt} still holds step {self.saved_step}, so free some space (or choose another --out) and run the "
                f"same command again to resume from it" if self.saved_step is not None and ckpt.exists()
                else "no checkpoint had been written yet")
        raise self._failure.with_note(kept)

    def _stop(self, save: bool) -> None:
        """Leave fit on a stop every rank has reached: save at this step unless told not to (or rank 0
        failed to write), then raise rank 0's WriteError or TrainingInterrupted."""
        signum = self.signals.signum or 0
        failed = self._agreed[1] if self.world > 1 else self._failure is not None
        if self.world > 1:  # which signal, when only some ranks (or none, for a failure) got one
            agreed = torch.tensor([float(signum)], device=self.device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            signum = int(agreed.item())
        if save and not failed and self._saving_step != self.step:
            self._write(self.save)
        self._raise_failure()
        if failed:
            raise StoppedWithRankZero(f"rank {self.rank} stops: rank 0 could not write a file of the run.")
        raise TrainingInterrupted(signum, self.step, self.config.optim.max_steps, self.out / "checkpoint.pt")
