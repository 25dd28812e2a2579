"""DDP on CPU: two gloo processes under torchrun train like one process on the same global batch."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from hvae_lib.config import override
from hvae_lib.models.presets import get_preset
from hvae_lib.training.checkpoint import load_checkpoint
from hvae_lib.training.engine import Trainer

ROOT = Path(__file__).resolve().parent.parent
SETS = ["max_steps=8", "log_every=2", "eval_every=4", "eval_batches=2", "checkpoint_every=4", "sample_every=4",
        "ema_rate=0.9", "quiet=true"]

# Run by torchrun on each rank, and once in-process for the single-process reference. It makes the loss
# (not the gradient) NaN at step 3 on the last rank only, so the ranks disagree locally and must agree
# to skip; it records which files non-zero ranks open for writing, and each rank's final weights.
WORKER = textwrap.dedent("""
    import os, sys
    import torch
    from hvae_lib.training import engine
    from hvae_lib.probability.gaussian import DiagonalGaussian

    DiagonalGaussian.rsample = lambda self, temperature=1.0: self.mu  # z = posterior mean: no sampling noise

    out, dump = os.path.abspath(sys.argv[sys.argv.index("--out") + 1]), os.environ["DUMP"]
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    writes = []

    def audit(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                writes.append(os.fsdecode(args[0]))
        elif event in ("os.rename", "os.remove", "os.truncate"):
            writes.append(os.fsdecode(args[0]) if not isinstance(args[0], int) else "?")

    if rank:
        sys.addaudithook(audit)

    loss = engine.Trainer.loss

    def poisoned(self, x, step):
        value, terms, beta = loss(self, x, step)
        if step == 3 and rank == world - 1:
            value = value + float("nan") * value.detach()  # a non-finite loss with finite gradients
        return value, terms, beta

    engine.Trainer.loss = poisoned
    fit = engine.Trainer.fit

    def fit_and_dump(self):
        result = fit(self)
        torch.save(self.model.state_dict(), os.path.join(dump, f"rank{rank}.pt"))
        with open(os.path.join(dump, f"writes{rank}.txt"), "w") as f:
            f.write("\\n".join(w for w in writes if os.path.abspath(w).startswith(out)))
        return result

    engine.Trainer.fit = fit_and_dump
    from hvae_lib.train import main

    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path):
    """torchrun --nproc_per_node=2 on CPU (gloo) against one process, vae_tiny, global batch 32.

    z is replaced by its posterior mean in both runs (the worker patches ``DiagonalGaussian.rsample``):
    the sampling noise differs between one process and two, and this isolates what is tested here:
    gradient averaging, data sharding (each rank 16 of the same 32 images), metric reduction and the
    agreement to skip an update that only one rank finds bad. Both ranks end with identical weights,
    equal within float tolerance to the single process's, and only rank 0 writes files.
    """
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    dumps = {n: tmp_path / f"dump{n}" for n in (1, 2)}
    for d in dumps.values():
        d.mkdir()
    sets = sum((["--set", s] for s in SETS), [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), "--preset", "vae_tiny", "--out", str(tmp_path / "two"), *sets],
                         cwd=ROOT, env={**env, "DUMP": str(dumps[2])}, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), "--preset", "vae_tiny", "--out", str(tmp_path / "one"), *sets],
                         cwd=ROOT, env={**env, "DUMP": str(dumps[1])}, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]

    rank0, rank1 = (torch.load(dumps[2] / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    single = torch.load(dumps[1] / "rank0.pt", weights_only=True)
    for k in single:
        assert torch.equal(rank0[k], rank1[k]), f"ranks disagree on {k}"
        assert torch.allclose(rank0[k], single[k], rtol=1e-4, atol=1e-5), f"{k}: DDP differs from one process"
    saved_two, saved_one = load_checkpoint(tmp_path / "two" / "checkpoint.pt"), load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    assert saved_two["total_skips"] == saved_one["total_skips"] == 1
    assert saved_two["world_size"] == 2 and len(saved_two["rng"]) == 2
    assert all(torch.equal(saved_two["model"][k], rank0[k]) for k in rank0)

    records = {n: [json.loads(line) for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()] for n in ("one", "two")}
    assert [r["step"] for r in records["one"]] == [r["step"] for r in records["two"]]
    for a, b in zip(records["one"], records["two"]):
        assert a.get("skipped") == b.get("skipped")
        for key in ("loss", "recon", "kl", "test_neg_elbo_nats"):
            if key in a:  # reduced over ranks: the global batch's mean, as one process computes it
                assert b[key] == pytest.approx(a[key], rel=1e-4, nan_ok=True), (key, a["step"])
    assert (dumps[2] / "writes1.txt").read_text() == "", "rank 1 wrote into the run folder"
    assert two.stdout.count('"split": "test"') == 1, "only rank 0 prints the result"


def test_rank_zero_alone_writes_and_batches_shard_in_process(tmp_path):
    """Without torchrun, the Trainer is rank 0 of 1 and shards nothing; with a faked rank 1 it writes nothing."""
    config = override(get_preset("vae_tiny"), ["quiet=true", "max_steps=2", "eval_every=0"])
    trainer = Trainer(config, tmp_path / "r0", resume=False)
    assert (trainer.rank, trainer.world, trainer.ddp) == (0, 1, trainer.model)
    assert len(trainer.batches.indices(0)) == 32
    trainer.is_main = False  # what a rank > 0 sees; its files would clash with rank 0's
    trainer.fit()
    assert not any(p.is_file() for p in (tmp_path / "r0").rglob("*"))


# Each rank notes the step it stopped at and the status main() returns, so the test can see that the
# ranks agreed and that every one of them left cleanly (a rank stuck in a collective writes nothing),
# and the process id of its launcher (tests/test_multinode.py signals the launcher of a given rank).
STOP_WORKER = textwrap.dedent("""
    import os, sys
    from hvae_lib.training import engine
    from hvae_lib.train import main

    fit, rank, dump = engine.Trainer.fit, int(os.environ["RANK"]), os.environ["DUMP"]
    with open(os.path.join(dump, f"launcher{rank}.txt"), "w") as f:
        f.write(str(os.getppid()))

    def fit_and_note(self):
        try:
            return fit(self)
        finally:
            with open(os.path.join(dump, f"step{rank}.txt"), "w") as f:
                f.write(str(self.step))

    engine.Trainer.fit = fit_and_note
    status = main(sys.argv[1:])
    with open(os.path.join(dump, f"status{rank}.txt"), "w") as f:
        f.write(str(status))
    sys.exit(status)
""")


@pytest.mark.slow
def test_sigterm_to_torchrun_saves_one_checkpoint_at_the_step_the_ranks_agree_on(tmp_path):
    """SIGTERM to the torchrun launcher (as a scheduler sends it), which forwards it to both gloo ranks:
    the ranks stop at the same step, rank 0 writes one checkpoint holding both ranks' RNG states and
    prints one line, and every rank returns 143 well inside the launcher's 30 s grace period."""
    script, dump, out = tmp_path / "worker.py", tmp_path / "dump", tmp_path / "run"
    script.write_text(STOP_WORKER)
    dump.mkdir()
    sets = sum((["--set", s] for s in ("max_steps=100000", "log_every=1", "eval_every=0", "checkpoint_every=0",
                                         "sample_every=0", "quiet=true")), [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "DUMP": str(dump)}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), "--preset", "vae_tiny", "--out", str(out), *sets],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    signalled = time.time()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert time.time() - signalled < 30, "the ranks did not leave within torchrun's grace period"
    steps = {r: int((dump / f"step{r}.txt").read_text()) for r in (0, 1)}
    assert {r: (dump / f"status{r}.txt").read_text() for r in (0, 1)} == {0: "143", 1: "143"}, stderr[-3000:]
    saved = load_checkpoint(out / "checkpoint.pt")
    assert steps[0] == steps[1] == saved["step"] >= 3, (steps, saved["step"])
    assert saved["world_size"] == 2 and len(saved["rng"]) == 2
    assert stderr.count("Stopped by SIGTERM") == 1 and f"at step {saved['step']} of 100000" in stderr
    assert "resume with: torchrun --standalone --nproc_per_node=2 -m hvae_lib.train --preset vae_tiny" in stderr
    assert not list(out.glob(".*.tmp"))
