"""Past one machine: two torchrun launchers with --nnodes 2 and c10d rendezvous on a localhost endpoint,
one gloo process each, as two nodes of a cluster would run them (docs/cluster.md).

Each launcher is started with :func:`hvae_lib.train.torchrun_command`, the command docs/cluster.md's
scripts build (tests/test_cluster.py checks that), with the training entry replaced by a worker
script from tests/test_distributed.py that patches the train command line for the test. Every
rendezvous gets a port that was free a moment before, so parallel test runs on one machine do not meet.
"""
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from test_distributed import SETS, STOP_WORKER, WORKER

from hvae_lib.config import override
from hvae_lib.models.presets import get_preset
from hvae_lib.train import torchrun_command
from hvae_lib.training.checkpoint import load_checkpoint
from hvae_lib.training.engine import Trainer

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it), for one rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_command(train_args: list[str], entry: tuple[str, ...], port: int | None = None) -> list[str]:
    """What each of the two "nodes" runs: the cluster recipe's torchrun line, torchrun started as
    ``python -m torch.distributed.run`` so that it is this environment's."""
    command = torchrun_command(train_args, nnodes=2, nproc_per_node=1, endpoint=f"localhost:{port or free_port()}",
                               run_id=f"test-{uuid.uuid4().hex[:8]}", entry=entry)
    return [sys.executable, "-m", "torch.distributed.run", *command[1:]]


def start_two_nodes(command: list[str], env: dict) -> list[subprocess.Popen]:
    return [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]


def finish(launchers: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each launcher; both are killed if they outlive ``timeout``."""
    results = []
    for proc in launchers:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in launchers:
                p.kill()
            raise AssertionError(f"a launcher ran past {timeout} s: {proc.communicate()[1][-3000:]}") from None
        results.append((proc.returncode, out, err))
    return results


@pytest.mark.slow
def test_two_nodes_train_like_one_process_on_the_same_global_batch(tmp_path):
    """vae_tiny for 8 steps, global batch 32 (16 a node), z replaced by its posterior mean in both runs
    (the noise differs between one process and two). The two ranks end with equal weights, equal within
    float tolerance to one process's, the update that only rank 1 finds bad is skipped on both nodes,
    rank 0 alone writes (one checkpoint, holding both RNG states) and prints the result."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    dumps = {n: tmp_path / f"dump{n}" for n in (1, 2)}
    for d in dumps.values():
        d.mkdir()
    sets = sum((["--set", s] for s in SETS), [])
    train_args = ["--preset", "vae_tiny", "--out", str(tmp_path / "two"), *sets]
    launchers = start_two_nodes(node_command(train_args, (str(script),)), {**ENV, "DUMP": str(dumps[2])})
    one = subprocess.run([sys.executable, str(script), "--preset", "vae_tiny", "--out", str(tmp_path / "one"), *sets],
                         cwd=ROOT, env={**ENV, "DUMP": str(dumps[1])}, capture_output=True, text=True, timeout=300)
    results = finish(launchers)
    assert [r[0] for r in results] == [0, 0], "\n".join(r[2][-2000:] for r in results)
    assert one.returncode == 0, one.stderr[-3000:]

    rank0, rank1 = (torch.load(dumps[2] / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    single = torch.load(dumps[1] / "rank0.pt", weights_only=True)
    for k in single:
        assert torch.equal(rank0[k], rank1[k]), f"the nodes disagree on {k}"
        assert torch.allclose(rank0[k], single[k], rtol=1e-4, atol=1e-5), f"{k}: two nodes differ from one process"
    saved = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert saved["step"] == 8 and saved["world_size"] == 2 and len(saved["rng"]) == 2
    assert saved["total_skips"] == load_checkpoint(tmp_path / "one" / "checkpoint.pt")["total_skips"] == 1
    assert all(torch.equal(saved["model"][k], rank0[k]) for k in rank0)
    assert sorted(p.name for p in (tmp_path / "two").glob("*.pt")) == ["checkpoint.pt"]
    assert not list((tmp_path / "two").glob(".*.tmp"))
    assert (dumps[2] / "writes1.txt").read_text() == "", "rank 1 wrote into the run folder"
    assert sum(out.count('"split": "test"') for _, out, _ in results) == 1, "only rank 0 prints the result"
    final = json.loads((tmp_path / "two" / "results.json").read_text())
    assert final["test_images"] == json.loads((tmp_path / "one" / "results.json").read_text())["test_images"]


@pytest.mark.slow
def test_sigterm_to_one_node_stops_both_with_one_checkpoint_and_a_resume_line_that_resumes(tmp_path):
    """SIGTERM to the launcher of rank 1 (the node that writes nothing, as a scheduler may preempt any
    node): it forwards the signal to its rank, the two ranks agree on the step in the next all-reduce,
    rank 0 on the other node writes the one checkpoint and prints one line, and both ranks return 143.
    The line's command is the two-node torchrun command the nodes were started with; run on two
    launchers again (on a fresh port, since a test must not count on the old one staying free), it
    resumes both nodes from the checkpoint and finishes."""
    script, dump, out = tmp_path / "worker.py", tmp_path / "dump", tmp_path / "run"
    script.write_text(STOP_WORKER)
    dump.mkdir()
    sets = sum((["--set", s] for s in ("max_steps=100000", "log_every=1", "eval_every=0", "checkpoint_every=0",
                                         "sample_every=0", "quiet=true")), [])
    train_args = ["--preset", "vae_tiny", "--out", str(out), *sets]
    command = node_command(train_args, (str(script),))
    launchers = start_two_nodes(command, {**ENV, "DUMP": str(dump)})
    metrics, deadline = out / "metrics.jsonl", time.time() + 240
    while (all(p.poll() is None for p in launchers) and time.time() < deadline
           and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3)):
        time.sleep(0.1)
    assert all(p.poll() is None for p in launchers), finish(launchers)
    rank1_launcher = int((dump / "launcher1.txt").read_text())
    assert rank1_launcher in {p.pid for p in launchers}
    signalled = time.time()
    os.kill(rank1_launcher, signal.SIGTERM)
    results = finish(launchers, timeout=120)
    assert time.time() - signalled < 30, "the nodes did not leave within torchrun's grace period"
    stderr = "".join(err for _, _, err in results)
    assert {r: (dump / f"status{r}.txt").read_text() for r in (0, 1)} == {0: "143", 1: "143"}, stderr[-3000:]
    steps = {r: int((dump / f"step{r}.txt").read_text()) for r in (0, 1)}
    saved = load_checkpoint(out / "checkpoint.pt")
    assert steps[0] == steps[1] == saved["step"] >= 3, (steps, saved["step"])
    assert saved["world_size"] == 2 and len(saved["rng"]) == 2 and not list(out.glob(".*.tmp"))
    lines = [line for line in stderr.splitlines() if line.startswith("Stopped by")]
    assert len(lines) == 1 and lines[0].startswith(f"Stopped by SIGTERM at step {saved['step']} of 100000"), stderr[-3000:]
    assert lines[0].endswith(" (on each of the 2 nodes)")
    resume = shlex.split(lines[0].split("resume with: ")[1].removesuffix(" (on each of the 2 nodes)"))
    started = ["torchrun", *command[3:]]
    launcher_options = started[:started.index(str(script))]
    assert resume == [*launcher_options, "-m", "hvae_lib.train", *train_args], resume

    resume = [a if not a.startswith("--rdzv-endpoint=") else f"--rdzv-endpoint=localhost:{free_port()}" for a in resume]
    more = ["--set", f"max_steps={saved['step'] + 2}"]
    results = finish(start_two_nodes([sys.executable, "-m", "torch.distributed.run", *resume[1:], *more], ENV))
    assert [r[0] for r in results] == [0, 0], "\n".join(r[2][-2000:] for r in results)
    resumed = load_checkpoint(out / "checkpoint.pt")
    assert resumed["step"] == saved["step"] + 2 and resumed["world_size"] == 2


# Rank 1 trains into another folder of the same name: what a node sees whose --out is a local disk
# rather than the shared file system the run folder should be on.
LOCAL_FOLDER_WORKER = """
import os, sys
from hvae_lib.train import main

argv = sys.argv[1:]
if os.environ["RANK"] == "1":
    argv[argv.index("--out") + 1] = os.environ["RANK1_OUT"]
sys.exit(main(argv))
"""


@pytest.mark.slow
def test_a_node_that_does_not_see_the_run_folder_stops_both_with_one_sentence(tmp_path):
    """Resuming over two nodes whose run folders differ (rank 0 finds the checkpoint, rank 1 an empty
    folder): before a step, every rank stops with exit status 2 and one sentence naming both ranks,
    their hosts and what each found, instead of training on unequal states until a collective hangs."""
    config = override(get_preset("vae_tiny"), ["quiet=true", "max_steps=1", "eval_every=0", "sample_every=0"])
    Trainer(config, tmp_path / "shared", resume=False).fit()
    script = tmp_path / "worker.py"
    script.write_text(LOCAL_FOLDER_WORKER)
    train_args = ["--preset", "vae_tiny", "--out", str(tmp_path / "shared"), "--set", "max_steps=3", "--set", "quiet=true"]
    env = {**ENV, "RANK1_OUT": str(tmp_path / "local")}
    results = finish(start_two_nodes(node_command(train_args, (str(script),)), env), timeout=240)
    errors = [line for _, _, err in results for line in err.splitlines() if line.startswith("error: ")]
    host = socket.gethostname()
    assert len(errors) == 2 and errors[0] == errors[1], "\n".join(r[2][-2000:] for r in results)
    assert errors[0] == (f"error: The ranks see different run folders: rank 0 (on {host}) finds a checkpoint at step 1 "
                         f"at {tmp_path / 'shared' / 'checkpoint.pt'} and rank 1 (on {host}) finds no checkpoint at "
                         f"{tmp_path / 'local' / 'checkpoint.pt'}; put --out on a file system every node shares "
                         f"(docs/cluster.md) and run the same command again.")
    assert "exitcode  : 2" in "".join(err for _, _, err in results)
    assert load_checkpoint(tmp_path / "shared" / "checkpoint.pt")["step"] == 1, "nothing saved is lost"


@pytest.mark.parametrize("cmdline, options", [
    (["/venv/bin/python", "/venv/bin/torchrun", "--nnodes=2", "--nproc-per-node", "8", "--rdzv-backend=c10d",
      "--rdzv-endpoint=node1:29500", "--rdzv-id=42", "-m", "hvae_lib.train", "--preset", "p", "--out", "-m"],
     ["--nnodes=2", "--nproc-per-node", "8", "--rdzv-backend=c10d", "--rdzv-endpoint=node1:29500", "--rdzv-id=42"]),
    (["python3", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", "--preset", "p"],
     ["--standalone", "--nproc_per_node=2"]),
    (["python", "-m", "hvae_lib.train", "--preset", "p"], None),
    ([], None),
])
def test_the_launcher_options_are_what_comes_before_the_training_script(cmdline, options):
    from hvae_lib.train import launcher_options
    assert launcher_options(cmdline) == options


def test_the_resume_line_of_a_multi_node_run_is_the_two_node_torchrun_command(monkeypatch):
    from hvae_lib.train import resume_command
    args = ["--preset", "vae_tiny", "--out", "runs/a b", "--fresh"]
    node = torchrun_command(args[:-1], nnodes=2, nproc_per_node=4, endpoint="node1:29500", run_id="7")
    for k, v in {"WORLD_SIZE": "8", "GROUP_WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(k, v)
    line = resume_command(args, launcher=node[1:node.index("-m")])
    assert line == shlex.join(node) + " (on each of the 2 nodes)"
    assert resume_command(args, launcher=None).startswith("torchrun --nnodes=2 --nproc-per-node=4 -m hvae_lib.train")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resume_command(args) == "python -m hvae_lib.train --preset vae_tiny --out 'runs/a b'"
