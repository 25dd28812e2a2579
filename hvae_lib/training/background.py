"""Train runs in a second process while a notebook goes on: the other core of a small machine.

A model 16 channels wide gains little from a second thread of a 2-core CPU (its convolutions are
too small to split: 30 steps of Chapter 6b's 69-layer model took 11.5-12.0 s on one thread and
10.0-10.8 s on two), so a chapter that trains several models one after the other wastes most of a
core.
:func:`train_in_background` starts one worker process, on one thread, that trains the given runs
one after the other with :class:`~hvae_lib.training.engine.Trainer` (each afresh: its folder is
removed first); the notebook trains the runs that need its own code meanwhile, and
:meth:`BackgroundRuns.wait` collects a finished run's test result (``Trainer(config, folder)`` or
``load_model`` then reads its trained weights from the run's checkpoint).

A run trained here is the run ``Trainer(config, folder).fit()`` gives in a fresh one-thread process,
to the last digit (same seed, same batches; a chapter that compares with runs trained elsewhere on
one thread sets ``torch.set_num_threads(1)`` for its own runs too).

The worker stops (with a checkpoint at the step reached, as ``fit`` does on SIGTERM) when the
notebook stops waiting for it (an interrupt during :meth:`~BackgroundRuns.wait`), when its kernel
exits or dies, and when the same runs are started again; a failed run is reported in one sentence
naming its log, ``<first run's folder>.background.log``.

    python -m hvae_lib.training.background SPEC.json    # what train_in_background starts
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from hvae_lib.config import Config, from_dict, to_dict
from hvae_lib.training.run_log import Progress

POLL_S = 0.5
_LIVE: list["BackgroundRuns"] = []  # the workers this process started and has not stopped


class BackgroundRunError(RuntimeError):
    """A run trained in the background failed or its worker stopped before finishing it."""


class BackgroundRuns:
    """A worker process training ``runs`` ({name: (config, folder)}) in order; see :func:`train_in_background`."""

    def __init__(self, runs: dict[str, tuple[Config, Path]], log: Path, process: subprocess.Popen):
        self.runs, self.log, self.process = runs, log, process

    def _results(self, name: str) -> Path:
        return self.runs[name][1] / "results.json"

    def done(self, name: str) -> bool:
        return self._results(name).exists()

    def steps_done(self, name: str) -> int:
        """The last training step the run's ``metrics.jsonl`` records (0 before its first record)."""
        metrics = self.runs[name][1] / "metrics.jsonl"
        step = 0
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a line being written
                    continue
                if record.get("split") == "train":
                    step = max(step, int(record.get("step", 0)))
        return step

    def wait(self, name: str, progress: bool = True) -> dict:
        """Block until run ``name`` is finished; its test result (the ``results.json`` that ``fit`` returns).

        An interrupt while waiting stops the worker (it saves a checkpoint) and is raised again.
        """
        if name not in self.runs:
            raise KeyError(f"{name!r} is not one of the runs trained in the background ({', '.join(self.runs)}).")
        config = self.runs[name][0]
        bar = Progress(config.optim.max_steps, self.steps_done(name), f"{name} (second process)",
                       enabled=progress and not self.done(name), interval_s=60.0)
        try:
            while not self.done(name):
                if self.process.poll() is not None and not self.done(name):
                    raise BackgroundRunError(self._failure(name))
                step = self.steps_done(name)
                bar.update(step, {"step": step})
                time.sleep(POLL_S)
            bar.update(config.optim.max_steps)
        except KeyboardInterrupt:
            self.stop()
            raise
        finally:
            bar.close()
        return json.loads(self._results(name).read_text())

    def _failure(self, name: str) -> str:
        output = self.log.read_text(errors="replace").strip().splitlines() if self.log.exists() else []
        last = output[-1].strip() if output else "no output"  # the worker's last words: the error, as a rule
        return (f"The background run {name!r} did not finish: its worker exited with status "
                f"{self.process.returncode} ({last[:200]}); the whole log is {self.log}.")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the worker (SIGTERM: it saves a checkpoint at the step reached) and wait for it to exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self in _LIVE:
            _LIVE.remove(self)


def train_in_background(runs: dict[str, tuple[Config, str | Path]]) -> BackgroundRuns:
    """Start one worker process (one thread) that trains ``runs`` = {name: (config, run folder)}
    afresh, in the given order; returns at once. A worker of this process already training one of
    these folders is stopped first, and the folders are removed before the worker starts, so that a
    result from an earlier run cannot be mistaken for this one's."""
    runs = {name: (config, Path(folder)) for name, (config, folder) in runs.items()}
    if not runs:
        raise ValueError("train_in_background needs at least one run.")
    folders = {folder.resolve() for _, folder in runs.values()}
    for live in list(_LIVE):
        if folders & {folder.resolve() for _, folder in live.runs.values()}:
            live.stop()
    for _, folder in runs.values():  # an earlier run's results.json must not pass for this one's
        if folder.is_dir():
            shutil.rmtree(folder)
    first = next(iter(runs.values()))[1]
    first.parent.mkdir(parents=True, exist_ok=True)
    spec_file = first.parent / f"{first.name}.background.json"
    log = first.parent / f"{first.name}.background.log"
    spec = {"parent_pid": os.getpid(),
            "runs": [{"name": name, "config": to_dict(config), "folder": str(folder.resolve())}
                     for name, (config, folder) in runs.items()]}
    spec_file.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "hvae_lib.training.background", str(spec_file.resolve())],
                                   stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    handle = BackgroundRuns(runs, log, process)
    _LIVE.append(handle)
    return handle


@atexit.register
def _stop_all() -> None:
    for live in list(_LIVE):
        live.stop(timeout_s=10.0)


# ----------------------------------------------------------------------------- the worker


def _watch_parent(parent_pid: int) -> None:
    """SIGTERM this process (the engine then saves and stops) once the process that started it is gone."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def main(argv: list[str] | None = None) -> int:
    import torch

    from hvae_lib.training.engine import Trainer
    from hvae_lib.training.stopping import TrainingInterrupted

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m hvae_lib.training.background SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    torch.set_num_threads(1)
    threading.Thread(target=_watch_parent, args=(spec["parent_pid"],), daemon=True).start()
    for run in spec["runs"]:
        start = time.perf_counter()
        print(f"{run['name']}: training into {run['folder']}", flush=True)
        try:
            result = Trainer(from_dict(run["config"]), run["folder"], resume=False).fit()
        except TrainingInterrupted as stop:
            print(f"{run['name']}: {stop}", flush=True)
            return stop.exit_status
        print(f"{run['name']}: test {result['test_bpd']:.4f} bits/dim in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
