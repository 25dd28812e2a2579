"""Checkpoints: everything a resume needs, weights-only loading, one-sentence refusals, atomic writes."""
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from hvae_lib import __version__
from hvae_lib.config import override
from hvae_lib.models.presets import get_preset
from hvae_lib.training import checkpoint as ckpt_io
from hvae_lib.training.checkpoint import CheckpointError, load_checkpoint, load_model, save_atomic
from hvae_lib.training.engine import Trainer


def tiny(*assignments):
    return override(get_preset("vae_tiny"), ["quiet=true", "eval_every=0", *assignments])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A vae_tiny run of 12 steps with EMA and fp16 (so the scaler has state)."""
    out = tmp_path_factory.mktemp("run")
    Trainer(tiny("max_steps=12", "ema_rate=0.9", "precision=fp16"), out, resume=False).fit()
    return out


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.rstrip().endswith(".") and "Traceback" not in message


def test_checkpoint_holds_everything_a_resume_needs(trained):
    raw = torch.load(trained / "checkpoint.pt", weights_only=True)  # plain tensors and primitives only
    for key in ("model", "ema", "optimizer", "scheduler", "scaler", "step", "rng", "config", "library_version",
                "total_skips", "data_info"):
        assert key in raw, key
    assert raw["step"] == 12 and raw["library_version"] == __version__
    assert raw["config"]["optim"]["ema_rate"] == 0.9 and raw["scaler"]["scale"] > 0
    assert set(raw["rng"][0]) >= {"torch", "numpy", "python"}
    assert raw["optimizer"]["state"], "the optimiser's moments must be saved"
    assert any(not torch.equal(raw["ema"][k], v) for k, v in raw["model"].items()), "EMA saved as its own weights"


def test_rng_state_round_trips_for_torch_numpy_and_python():
    state = ckpt_io.rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    ckpt_io.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


class MakesAFile:
    """Unpickling this object would open (create) a marker file: arbitrary code execution."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_with_pickled_objects_is_refused_and_runs_nothing(tmp_path):
    payload = {"format": ckpt_io.FORMAT, "model": {}, "trap": MakesAFile(tmp_path / "marker")}
    torch.save(payload, tmp_path / "evil.pt")
    # The payload works: an unsafe load does create the marker (here under another name).
    torch.save({"trap": MakesAFile(tmp_path / "proof")}, tmp_path / "proof.pt")
    torch.load(tmp_path / "proof.pt", weights_only=False)
    assert (tmp_path / "proof").exists()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "marker").exists(), "the pickled code ran"
    assert "Refused" in str(err.value) and "nothing in it was run" in str(err.value) and one_sentence(str(err.value))


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "foreign", "missing"])
def test_broken_or_foreign_files_get_one_sentence(trained, tmp_path, kind):
    good = (trained / "checkpoint.pt").read_bytes()
    path = tmp_path / "checkpoint.pt"
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("these are not the weights you are looking for")
    elif kind == "foreign":
        torch.save(torch.nn.Linear(2, 2).state_dict(), path)  # a plain state_dict from elsewhere
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert one_sentence(message) and str(path) in message
    expected = {"truncated": "corrupted", "empty": "corrupted", "text": "corrupted",
                "foreign": "not an hvae_lib checkpoint", "missing": "No checkpoint"}[kind]
    assert expected in message


def test_resuming_another_model_says_so_in_one_sentence(trained, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes((trained / "checkpoint.pt").read_bytes())
    with pytest.raises(CheckpointError) as err:
        Trainer(tiny("max_steps=12", "ema_rate=0.9", "precision=fp16", "latent_dim=8"), tmp_path)
    message = str(err.value)
    assert one_sentence(message) and "model.latent_dim=4 there but 8 here" in message and "--fresh" in message
    with pytest.raises(CheckpointError, match=r"image_shape=\(3, 16, 16\) there but \(3, 32, 32\) here"):
        Trainer(tiny("max_steps=12", "ema_rate=0.9", "precision=fp16", "resolution=32"), tmp_path)
    with pytest.raises(CheckpointError, match="optim.optimizer='adamax' there but 'adamw' here"):
        Trainer(tiny("max_steps=12", "ema_rate=0.9", "precision=fp16", "optimizer=adamw"), tmp_path)
    # Changing what does not shape the state (precision, EMA, schedule) resumes fine.
    trainer = Trainer(tiny("max_steps=12", "ema_rate=0.99", "precision=fp32", "schedule=constant"), tmp_path)
    assert trainer.step == 12


def test_evaluation_and_sampling_load_the_ema_weights(trained):
    model, config, info = load_model(trained / "checkpoint.pt")
    saved = load_checkpoint(trained / "checkpoint.pt")
    assert all(torch.equal(v, saved["ema"][k]) for k, v in model.state_dict().items())
    assert not model.training and config.model.latent_dim == 4 and info.image_shape == (3, 16, 16)


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"format": ckpt_io.FORMAT, "value": torch.tensor(1)}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError):
        save_atomic({"format": ckpt_io.FORMAT, "value": Unsaveable()}, path)
    assert load_checkpoint(path)["value"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_temp_file_left_by_a_killed_writer_is_removed_by_the_next_save(tmp_path):
    path = tmp_path / "checkpoint.pt"
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".other.pt.abc123.tmp").write_bytes(b"not ours")
    save_atomic({"format": ckpt_io.FORMAT}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.abc123.tmp", "checkpoint.pt"]


WRITER = textwrap.dedent("""
    import sys, torch
    from hvae_lib.training.checkpoint import FORMAT, save_atomic
    big = torch.empty(8_000_000)  # 32 MB, so a save takes a while and a kill often lands inside one
    i = 0
    while True:
        i += 1
        save_atomic({"format": FORMAT, "i": i, "weights": big.fill_(float(i))}, sys.argv[1])
        print(i, flush=True)
""")


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_never_leaves_a_broken_file(tmp_path):
    """SIGKILL a process that rewrites a 32 MB checkpoint in a loop, at seeded random moments: the file on
    disk always loads and is one whole save (every weight equals its counter); a leftover temp file from
    the killed save is removed by the next save."""
    script, path = tmp_path / "writer.py", tmp_path / "checkpoint.pt"
    script.write_text(WRITER)
    rng = random.Random(1234)
    seen = []
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "1" or seen, "the writer should complete its first save"
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        saved = load_checkpoint(path)
        assert torch.all(saved["weights"] == float(saved["i"])), "a checkpoint mixing two saves"
        seen.append(saved["i"])
        assert len(list(tmp_path.glob(".checkpoint.pt.*.tmp"))) <= 1
    save_atomic({"format": ckpt_io.FORMAT}, path)
    assert not list(tmp_path.glob(".checkpoint.pt.*.tmp"))
