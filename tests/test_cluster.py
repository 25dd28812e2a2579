"""The cluster recipes of docs/cluster.md: what can be checked without a cluster.

Both scripts parse (``bash -n``), and the torchrun command each builds for a node is
:func:`hvae_lib.train.torchrun_command`'s, the command tests/test_multinode.py trains two nodes
with. The SLURM script runs here with stand-ins for ``scontrol``, ``srun`` and ``scancel`` that
record what they are asked (its signal-and-requeue logic is all bash); the ssh script runs for real
on two "hosts" that are both this machine, through an ``ssh`` stand-in that runs the remote command
locally, and is stopped with SIGTERM as a user would stop it.
"""
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

from hvae_lib.train import torchrun_command
from hvae_lib.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SLURM, NODES = ROOT / "docs/cluster/slurm.sbatch", ROOT / "docs/cluster/nodes.sh"
TRAIN_ARGS = ["--set", "max_steps=100", "--set", "lr=3e-4"]


def fake_commands(bin_dir: Path, **scripts: str) -> dict:
    """Executables named after the keyword arguments on a PATH in front of the real one; each appends
    its arguments, one per line, to LOG/NAME.args before running its script. The append holds a lock:
    nodes.sh starts its ssh calls at once, and two unlocked appends can interleave their lines."""
    bin_dir.mkdir()
    for name, body in scripts.items():
        path = bin_dir / name
        record = f'{{ flock 9; printf "%s\\n" "$@" >&9; }} 9>> "$LOG/{name}.args"'
        path.write_text(f'#!/bin/bash\n{record}\n{body}\n')
        path.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def recorded(log: Path, name: str) -> list[str]:
    path = log / f"{name}.args"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("script", [SLURM, NODES], ids=["slurm", "nodes"])
def test_the_scripts_parse_and_docs_cluster_md_shows_them_as_they_are(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True).returncode == 0
    assert os.access(script, os.X_OK), f"{script} should be executable"
    doc = (ROOT / "docs/cluster.md").read_text()
    assert f"```bash\n{script.read_text()}```" in doc, f"docs/cluster.md's copy of {script.name} differs from the file"
    assert "docs/cluster.md" in (ROOT / "README.md").read_text()


SLURM_FAKES = dict(
    scontrol='[ "$1" = show ] && printf "gpu-a17\\ngpu-a18\\n"; true',
    srun='echo $$ > "$LOG/srun.pid"; trap "kill \\$!; exit 1" TERM; sleep "$SRUN_SECONDS" & wait; exit "$SRUN_STATUS"',
    scancel='kill -TERM "$(cat "$LOG/srun.pid")"',  # as SIGUSR1 would stop the training step
)
SLURM_ENV = {"SLURM_JOB_NODELIST": "gpu-a[17-18]", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "4242",
             "SLURM_GPUS_ON_NODE": "8"}


def run_slurm_script(tmp_path, seconds: float, status: int, signal_after: float | None = None):
    log = tmp_path / "log"
    log.mkdir()
    env = {**fake_commands(tmp_path / "bin", **SLURM_FAKES), **SLURM_ENV, "LOG": str(log),
           "SRUN_SECONDS": str(seconds), "SRUN_STATUS": str(status)}
    proc = subprocess.Popen(["bash", str(SLURM), "vdvae_cifar10", "/shared/runs/c10", *TRAIN_ARGS], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if signal_after is not None:
        deadline = time.time() + 30
        while not (log / "srun.pid").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(signal_after)
        proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 sends, to the batch shell alone
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out + err, log


def test_the_slurm_script_starts_one_torchrun_per_node_with_the_multinode_tests_command(tmp_path):
    status, output, log = run_slurm_script(tmp_path, seconds=0, status=0)
    assert status == 0, output
    srun = recorded(log, "srun")
    assert srun[:3] == ["--ntasks-per-node=1", "bash", "-c"], srun
    wrapper, torchrun = srun[3], srun[5:]
    expected = torchrun_command(["--preset", "vdvae_cifar10", "--out", "/shared/runs/c10", *TRAIN_ARGS], nnodes=2,
                                nproc_per_node=8, endpoint="gpu-a17:29500", run_id="4242")
    assert torchrun == expected
    assert recorded(log, "scontrol") == ["show", "hostnames", "gpu-a[17-18]"], "no requeue after a finished run"
    directives = [line.split()[1] for line in SLURM.read_text().splitlines() if line.startswith("#SBATCH")]
    assert {"--signal=B:USR1@120", "--requeue", "--ntasks-per-node=1", "--open-mode=append"} <= set(directives)
    # Each node's launcher ignores SIGUSR1 (torchrun would die of it) and hands the ignoring on through
    # exec; Python keeps an ignored SIGUSR1 ignored until the training process installs its handler.
    probe = subprocess.run(["bash", "-c", wrapper, "node", sys.executable, "-c",
                            "import signal; print(signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN)"], capture_output=True, text=True)
    assert probe.stdout.strip() == "True", probe


def test_the_slurm_script_passes_the_time_limit_warning_on_and_requeues_into_the_same_run(tmp_path):
    status, output, log = run_slurm_script(tmp_path, seconds=30, status=0, signal_after=0.5)
    assert status == 0, output
    assert recorded(log, "scancel") == ["--signal=USR1", "4242"], "the warning goes to the training processes"
    assert recorded(log, "scontrol")[-2:] == ["requeue", "4242"]
    assert "requeueing job 4242: it resumes from /shared/runs/c10/checkpoint.pt" in output


def test_the_slurm_script_passes_a_failure_on_without_requeueing(tmp_path):
    status, output, log = run_slurm_script(tmp_path, seconds=0, status=3)
    assert status == 3, output
    assert "requeue" not in recorded(log, "scontrol")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_ssh_script_trains_over_two_hosts_and_sigterm_stops_them_with_one_checkpoint(tmp_path):
    """nodes.sh with two hosts that are both this machine: each "ssh" runs its remote command here, so
    two real torchrun launchers train vae_tiny with the command the multi-node test uses; SIGTERM to
    the script reaches the first host's launcher, the ranks stop at one step, rank 0 saves, and the
    script leaves with 143. Running the same line again resumes (here to a lower max_steps)."""
    log, out = tmp_path / "log", tmp_path / "run"
    log.mkdir()
    env = {**fake_commands(tmp_path / "bin", ssh='shift 2; exec bash -c "$2"'), "LOG": str(log),
           "OMP_NUM_THREADS": "1", "HVAE_REPO": str(ROOT), "HVAE_NPROC_PER_NODE": "1",
           "HVAE_RDZV_PORT": str(free_port()), "HVAE_RUN_ID": f"test-{uuid.uuid4().hex[:8]}"}
    sets = ["--set", "max_steps=100000", "--set", "log_every=1", "--set", "eval_every=0", "--set", "checkpoint_every=0",
            "--set", "sample_every=0", "--set", "quiet=true"]
    hosts = "localhost 127.0.0.1"
    proc = subprocess.Popen(["bash", str(NODES), hosts, "vae_tiny", str(out), *sets], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = out / "metrics.jsonl", time.time() + 240
    while proc.poll() is None and time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    saved = load_checkpoint(out / "checkpoint.pt")
    assert saved["step"] >= 3 and saved["world_size"] == 2
    assert stderr.count("Stopped by SIGTERM") == 1 and f"at step {saved['step']} of 100000" in stderr

    ssh = recorded(log, "ssh")
    remote = [shlex.split(ssh[i + 3]) for i, a in enumerate(ssh) if a == "-o" and ssh[i + 3].startswith("cd ")]
    expected = torchrun_command(["--preset", "vae_tiny", "--out", str(out), *sets], nnodes=2, nproc_per_node=1,
                                endpoint=f"localhost:{env['HVAE_RDZV_PORT']}", run_id=env["HVAE_RUN_ID"])
    assert [r[r.index("torchrun"):] for r in remote] == [expected, expected]
    assert [ssh[i + 1] for i, a in enumerate(ssh) if a == "-o"][:2] == ["BatchMode=yes"] * 2
    resumed = subprocess.run(["bash", str(NODES), hosts, "vae_tiny", str(out), *sets, "--set", f"max_steps={saved['step'] + 2}"],
                             env={**env, "HVAE_RDZV_PORT": str(free_port())}, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(out / "checkpoint.pt")["step"] == saved["step"] + 2
