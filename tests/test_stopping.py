"""Stopping without losing work: SIGINT and SIGTERM mid-run save at the step reached, say so in one
line, exit with 128 + the signal, and resume bit for bit; a notebook's interrupt leaves the trainer usable."""
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from state_compare import state_equal

from hvae_lib.config import override
from hvae_lib.models.presets import get_preset
from hvae_lib.training import checkpoint as ckpt_io
from hvae_lib.training.checkpoint import load_checkpoint
from hvae_lib.training.engine import Trainer
from hvae_lib.training.stopping import TrainingInterrupted

ROOT = Path(__file__).resolve().parent.parent
COMMON = ("ema_rate=0.9", "log_every=3", "sample_every=0", "checkpoint_every=5", "schedule_steps=40")


def tiny(*assignments):
    return override(get_preset("vae_tiny"), ["quiet=true", "eval_every=0", *COMMON, *assignments])


def same_run(a: dict, b: dict) -> bool:
    """Two checkpoints of the same run state: weights, EMA, optimiser, schedule, step and the torch RNG
    (the engine draws only from torch's; NumPy's and Python's are saved but depend on the process)."""
    return (all(state_equal(a[k], b[k]) for k in ("model", "ema", "optimizer", "scheduler", "step"))
            and torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"]))


class SignalsItself(Trainer):
    """Sends itself ``signum`` ``times`` times during the forward pass of step ``at``, as Ctrl-C, a
    scheduler or Jupyter's interrupt button would."""

    at, signum, times = 7, signal.SIGINT, 1

    def loss(self, x, step):
        if step == self.at:
            for _ in range(self.times):
                signal.raise_signal(self.signum)
        return super().loss(x, step)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted 12-step run every interrupted one must equal."""
    out = tmp_path_factory.mktemp("straight")
    Trainer(tiny("max_steps=12"), out, resume=False).fit()
    return load_checkpoint(out / "checkpoint.pt")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_run_saves_at_the_step_reached_and_a_new_trainer_resumes_exactly(signum, straight, tmp_path):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    trainer = SignalsItself(tiny("max_steps=12"), tmp_path, resume=False)
    trainer.signum = signum
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.fit()
    assert (stop.value.signum, stop.value.step, stop.value.exit_status) == (signum, 8, 128 + signum)
    assert isinstance(stop.value, KeyboardInterrupt) and "\n" not in str(stop.value)
    assert "step 8 of 12" in str(stop.value) and str(tmp_path / "checkpoint.pt") in str(stop.value)
    assert {s: signal.getsignal(s) for s in handlers} == handlers, "fit must give the signal handlers back"
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["step"] == 8, "the step under way finishes, then the checkpoint is written at the step reached"
    assert not list(tmp_path.glob(".*.tmp"))
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6, 8], "the steps since the last record are logged before stopping"
    Trainer(tiny("max_steps=12"), tmp_path).fit()  # a new process resuming, as the printed command does
    assert same_run(load_checkpoint(tmp_path / "checkpoint.pt"), straight)


def test_in_a_notebook_the_same_trainer_fits_again_and_ends_where_an_uninterrupted_run_does(straight, tmp_path):
    """Interrupting the kernel raises TrainingInterrupted (a KeyboardInterrupt: the cell stops, as for
    any interrupt, and 'run all' stops there); calling fit() again on the same object resumes exactly."""
    trainer = SignalsItself(tiny("max_steps=12"), tmp_path, resume=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert trainer.step == 8
    result = trainer.fit()
    assert result["step"] == 12 and same_run(load_checkpoint(tmp_path / "checkpoint.pt"), straight)


def test_a_second_signal_says_the_stop_is_under_way_and_a_third_stops_at_once(tmp_path, capsys):
    twice = SignalsItself(tiny("max_steps=12"), tmp_path / "twice", resume=False)
    twice.times = 2
    with pytest.raises(TrainingInterrupted):
        twice.fit()
    err = capsys.readouterr().err
    assert "SIGINT: already stopping" in err and load_checkpoint(tmp_path / "twice" / "checkpoint.pt")["step"] == 8
    thrice = SignalsItself(tiny("max_steps=12"), tmp_path / "thrice", resume=False)
    thrice.times = 3
    with pytest.raises(KeyboardInterrupt) as forced:
        thrice.fit()
    assert not isinstance(forced.value, TrainingInterrupted) and "without saving" in str(forced.value)
    assert load_checkpoint(tmp_path / "thrice" / "checkpoint.pt")["step"] == 5, "the last periodic checkpoint, whole"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_signals_while_the_checkpoint_is_written_never_interrupt_it(tmp_path, monkeypatch):
    """Three Ctrl-Cs in the middle of writing the step-5 checkpoint: the write completes (no signal
    interrupts a save), then the run stops at that step with nothing half-written."""
    original = ckpt_io.save_atomic

    def interrupted_save(state, path):
        if state["step"] == 5:
            for _ in range(3):
                signal.raise_signal(signal.SIGINT)
        original(state, path)

    monkeypatch.setattr(ckpt_io, "save_atomic", interrupted_save)
    trainer = Trainer(tiny("max_steps=12"), tmp_path, resume=False)
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.fit()
    assert stop.value.step == 5 and load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 5
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_signal_during_the_final_evaluation_keeps_the_finished_checkpoint(tmp_path):
    class InterruptedEvaluation(Trainer):
        def evaluate(self, max_batches=0):
            signal.raise_signal(signal.SIGTERM)
            return super().evaluate(max_batches)

    trainer = InterruptedEvaluation(tiny("max_steps=6"), tmp_path, resume=False)
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.fit()
    assert stop.value.step == 6 and load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 6
    assert not (tmp_path / "results.json").exists()
    assert Trainer(tiny("max_steps=6"), tmp_path).fit()["step"] == 6  # the same command evaluates it


# ----------------------------------------------------------------------------- the command line


def train_cmd(out: Path, *assignments):
    sets = sum((["--set", a] for a in assignments), [])
    return [sys.executable, "-m", "hvae_lib.train", "--preset", "vae_tiny", "--out", str(out), *sets]


def wait_for_records(path: Path, n: int, proc, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run did not log {n} records: {proc.poll()}")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_command_line_stops_on_a_signal_with_one_line_and_the_conventional_status(signum, tmp_path):
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler) to `python -m hvae_lib.train` in the middle of a run with no
    periodic checkpoint due: exit status 130 or 143, one line with the step, the checkpoint and the
    command that resumes, a checkpoint at that step; running that command (with a shorter max_steps)
    gives the weights of an uninterrupted run, bit for bit."""
    out = tmp_path / "run"
    sets = ("max_steps=2000", "schedule_steps=2000", "checkpoint_every=0", "eval_every=0", "log_every=1",
            "ema_rate=0.9", "sample_every=0")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(train_cmd(out, *sets), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for_records(out / "metrics.jsonl", 3, proc)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr[-2000:]
    assert "Traceback" not in stderr and stdout == ""
    lines = [line for line in stderr.splitlines() if line.startswith("Stopped by")]
    assert len(lines) == 1 and stderr.rstrip().endswith(lines[0]), stderr[-2000:]
    step = load_checkpoint(out / "checkpoint.pt")["step"]
    assert lines[0].startswith(f"Stopped by {signal.Signals(signum).name} at step {step} of 2000; checkpoint: {out}")
    assert 3 <= step < 2000 and not list(out.glob(".*.tmp"))
    command = shlex.split(lines[0].split("resume with: ")[1])
    assert command[:3] == ["python", "-m", "hvae_lib.train"]
    resumed = subprocess.run([sys.executable, *command[1:], "--set", f"max_steps={step + 3}", "--set", "quiet=true"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = Trainer(override(get_preset("vae_tiny"), [*sets, f"max_steps={step + 3}", "quiet=true"]),
                       tmp_path / "straight", resume=False)
    straight.fit()
    assert same_run(load_checkpoint(out / "checkpoint.pt"), load_checkpoint(tmp_path / "straight" / "checkpoint.pt"))
