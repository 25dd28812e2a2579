"""hvae_lib.training.background: runs trained in a second process, as a chapter trains its ablations."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hvae_lib.config import override
from hvae_lib.models.presets import get_preset
from hvae_lib.training import background
from hvae_lib.training.background import BackgroundRunError, train_in_background
from hvae_lib.training.engine import Trainer

ROOT = Path(__file__).resolve().parents[1]


def tiny(seed=0, steps=10, **changes):
    return override(get_preset("vdvae_tiny"), {"seed": seed, "max_steps": steps, "quiet": True, **changes})


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has exited


def wait_until(condition, timeout_s=120.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
def test_runs_trained_in_the_background_are_the_runs_trained_here_on_one_thread(tmp_path):
    stale = tmp_path / "seed1"
    stale.mkdir()
    (stale / "results.json").write_text('{"test_bpd": 0.0}')  # an earlier run's result: must not be taken for this one's
    jobs = train_in_background({"seed0": (tiny(0), tmp_path / "seed0"), "seed1": (tiny(1), stale)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = Trainer(tiny(0), tmp_path / "here", resume=False)
        expected = here.fit()
    finally:
        torch.set_num_threads(threads)
    got = jobs.wait("seed0", progress=False)
    assert got["test_bpd"] == expected["test_bpd"]  # to the last digit: same seed, batches and thread count
    trained = Trainer(tiny(0), tmp_path / "seed0", resume=True)  # the weights it trained, from its checkpoint
    assert trained.step == 10 and all(torch.equal(a, b) for a, b in zip(trained.model.state_dict().values(),
                                                                          here.model.state_dict().values()))
    other = jobs.wait("seed1", progress=False)
    assert other["test_bpd"] not in (0.0, expected["test_bpd"])  # trained afresh, with its own seed
    jobs.process.wait(30)
    assert jobs.process.returncode == 0
    log = jobs.log.read_text()
    assert "seed0: test" in log and "seed1: test" in log


def test_a_run_that_fails_is_one_sentence_naming_its_log(tmp_path):
    not_a_folder = tmp_path / "a_file"
    not_a_folder.write_text("")
    jobs = train_in_background({"broken": (tiny(0), not_a_folder)})
    with pytest.raises(BackgroundRunError) as err:
        jobs.wait("broken", progress=False)
    message = str(err.value)
    assert message.startswith("The background run 'broken' did not finish: its worker exited with status 1 (")
    assert "cannot be written" in message and str(jobs.log) in message and "\n" not in message
    with pytest.raises(KeyError, match="not one of the runs trained in the background"):
        jobs.wait("no such run")


@pytest.mark.slow
def test_stopping_saves_a_checkpoint_and_starting_the_same_runs_again_stops_the_first_worker(tmp_path):
    folder = tmp_path / "long"
    first = train_in_background({"long": (tiny(0, steps=400, log_every=1, checkpoint_every=0), folder)})
    wait_until(lambda: first.steps_done("long") >= 2)
    second = train_in_background({"long": (tiny(0, steps=400, log_every=1, checkpoint_every=0), folder)})
    assert first.process.returncode == 128 + 15  # SIGTERM: stopped after a step, with a checkpoint
    wait_until(lambda: second.steps_done("long") >= 2)
    second.stop()
    assert second.process.returncode == 128 + 15 and (folder / "checkpoint.pt").exists()
    assert Trainer(tiny(0, steps=400), folder, resume=True).step == second.steps_done("long")
    assert second not in background._LIVE


def test_the_worker_stops_when_the_process_that_started_it_dies(tmp_path):
    script = (f"import os, sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from pathlib import Path\n"
              "from hvae_lib.config import override\n"
              "from hvae_lib.models.presets import get_preset\n"
              "from hvae_lib.training.background import train_in_background\n"
              "config = override(get_preset('vdvae_tiny'), {'max_steps': 100000, 'log_every': 1, 'quiet': True})\n"
              f"jobs = train_in_background({{'long': (config, Path({str(tmp_path / 'long')!r}))}})\n"
              "import time\n"
              "while jobs.steps_done('long') < 1:  # training has begun\n"
              "    time.sleep(0.2)\n"
              "print(jobs.process.pid, flush=True)\n"
              "os._exit(0)  # dies without its exit handlers, as a killed kernel does\n")
    started = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    pid = int(started.stdout.split()[0])
    wait_until(lambda: not alive(pid), timeout_s=60)
    log = (tmp_path / "long.background.log").read_text()
    assert "Stopped by SIGTERM" in log  # it stopped the engine's way: a checkpoint at the step reached
    assert (tmp_path / "long" / "checkpoint.pt").exists()
    assert json.loads((tmp_path / "long.background.json").read_text())["runs"][0]["name"] == "long"
