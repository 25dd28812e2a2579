"""A full or read-only disk: one sentence naming the file and the cause, the last good checkpoint kept,
nothing half-written; a run folder that cannot be written is refused before training."""
import contextlib
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hvae_lib.config import override
from hvae_lib.config.ranges import ConfigError
from hvae_lib.models.presets import get_preset
from hvae_lib.training import engine, safe_write
from hvae_lib.training.checkpoint import load_checkpoint
from hvae_lib.training.engine import Trainer
from hvae_lib.training.safe_write import WriteError, append_line, trim_event_file, write_atomic

ROOT = Path(__file__).resolve().parent.parent
def full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def tiny(*assignments):
    return override(get_preset("vae_tiny"), ["quiet=true", "eval_every=0", "sample_every=0", "log_every=1",
                                             "checkpoint_every=3", *assignments])


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and "Traceback" not in message


def temps(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*") if p.name.endswith(".tmp")]


def fail_when(predicate):
    """A writer that writes part of its data, then meets a full disk, once ``predicate()`` is true."""

    def write(f, data: bytes):
        if predicate():
            f.write(data[: len(data) // 2])
            f.flush()
            raise full()
        f.write(data)

    return write


# ----------------------------------------------------------------------------- the writers


def test_write_atomic_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "file.bin"
    write_atomic(path, lambda f: f.write(b"old contents"))
    with pytest.raises(WriteError) as err:
        write_atomic(path, lambda f: fail_when(lambda: True)(f, b"new contents that do not fit"))
    assert str(err.value) == f"Could not write {path}: the disk is full (errno 28)."
    assert path.read_bytes() == b"old contents" and temps(tmp_path) == []


def test_append_line_cuts_a_half_written_line_back(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    append_line(path, '{"step": 1}')
    calls = []

    def full_after_a_few_bytes(fd, data):
        calls.append(len(data))
        if len(calls) > 1:
            raise full()
        return os.write(fd, data[:5])  # the disk takes 5 bytes, then refuses the rest

    monkeypatch.setattr(safe_write, "_write", full_after_a_few_bytes)
    with pytest.raises(WriteError, match="metrics.jsonl: the disk is full"):
        append_line(path, '{"step": 2, "loss": 1.0}')
    assert path.read_text() == '{"step": 1}\n' and calls[0] > 5


def test_an_event_file_is_cut_back_to_its_last_whole_record(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    writer.add_scalar("loss", 1.0, 1)
    writer.close()
    (events,) = tmp_path.glob("events.out.tfevents.*")
    whole = events.read_bytes()
    with open(events, "ab") as f:
        f.write(whole[-30:-3])  # part of a record, as a write cut short leaves it
    trim_event_file(events)
    assert events.read_bytes() == whole


# ----------------------------------------------------------------------------- a run meets a full disk


def test_a_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == 6:
            f.write(b"half a checkpoint")
            raise full()
        original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    trainer = Trainer(tiny("max_steps=12"), tmp_path, resume=False)
    with pytest.raises(WriteError) as err:
        trainer.fit()
    message, ckpt = str(err.value), tmp_path / "checkpoint.pt"
    assert one_sentence(message), message
    assert message.startswith(f"Could not write {ckpt}: the disk is full (errno 28); {ckpt} still holds step 3")
    assert load_checkpoint(ckpt)["step"] == 3 and temps(tmp_path) == []
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == list(range(1, 7))


def test_a_full_disk_while_logging_metrics_names_the_log_and_leaves_whole_lines(tmp_path, monkeypatch):
    trainer = Trainer(tiny("max_steps=12"), tmp_path, resume=False)
    real_write = os.write

    def full_at_step_5(fd, data):
        if b'"step": 5,' in data:
            real_write(fd, data[:7])
            raise full()
        return real_write(fd, data)

    monkeypatch.setattr(safe_write, "_write", full_at_step_5)
    with pytest.raises(WriteError) as err:
        trainer.fit()
    path = tmp_path / "metrics.jsonl"
    assert str(err.value).startswith(f"Could not write {path}: the disk is full") and one_sentence(str(err.value))
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # TensorBoard's writer thread re-raises
def test_a_full_disk_while_writing_tensorboard_events_trims_the_event_file(tmp_path, monkeypatch):
    from tensorboard.compat.tensorflow_stub.io import gfile

    trainer = Trainer(tiny("max_steps=12"), tmp_path, resume=False)
    original, appends, size_before = gfile.LocalFileSystem.append, [], []

    def append(self, filename, content, binary_mode=False):
        appends.append(1)
        if len(appends) == 50:  # about six steps in (nine scalars a step): the disk fills in the middle of a record
            size_before.append(os.path.getsize(filename))
            with open(filename, "ab") as f:
                f.write(content[: len(content) // 2])
            raise full()
        original(self, filename, content, binary_mode)

    monkeypatch.setattr(gfile.LocalFileSystem, "append", append)
    with pytest.raises(WriteError) as err:
        trainer.fit()
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    assert str(err.value).startswith(f"Could not write {events}: the disk is full") and one_sentence(str(err.value))
    assert events.stat().st_size == size_before[0], "the half-written record is cut off"
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3


def test_a_full_disk_while_writing_the_sample_grid_keeps_the_previous_grid(tmp_path, monkeypatch):
    trainer = Trainer(tiny("max_steps=12", "sample_every=2"), tmp_path, resume=False)
    original, grids = engine.save_image, []

    def save_image(grid, f, format):
        grids.append(1)
        if len(grids) == 2:
            f.write(b"\x89PNG half")
            raise full()
        original(grid, f, format=format)

    monkeypatch.setattr(engine, "save_image", save_image)
    with pytest.raises(WriteError, match="samples.png: the disk is full .* still holds step 3"):
        trainer.fit()
    from PIL import Image

    assert Image.open(tmp_path / "samples.png").size == (4 * 18 + 2, 4 * 18 + 2) and temps(tmp_path) == []


# ----------------------------------------------------------------------------- real file systems


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, read_only: bool = False):
    """A small tmpfs mounted at ``folder`` (needs root); skips the test where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                               text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if mount.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip() or 'not root'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@contextlib.contextmanager
def read_only_folder(folder: Path):
    """A folder this process cannot write: a read-only tmpfs as root, else a folder without write permission."""
    if os.geteuid() == 0:
        with tmpfs(folder, "1m", read_only=True):
            yield folder, "the file system is read-only (errno 30)"
        return
    folder.mkdir()
    folder.chmod(0o555)
    try:
        yield folder, "permission was denied (errno 13)"
    finally:
        folder.chmod(0o755)


@pytest.mark.slow
def test_a_real_full_disk_stops_the_command_line_with_one_line(tmp_path):
    """The command line on a 300 KB tmpfs: its first checkpoint (about 180 KB) fits, the second cannot
    (the new file is written beside the old one): one line naming the file and the cause, status 1,
    and the previous checkpoint loads."""
    with tmpfs(tmp_path / "disk", "300k") as disk:
        out = disk / "run"
        sets = sum((["--set", a] for a in ("max_steps=30", "checkpoint_every=5", "eval_every=0", "sample_every=0",
                                            "log_every=5", "quiet=true")), [])
        proc = subprocess.run([sys.executable, "-m", "hvae_lib.train", "--preset", "vae_tiny", "--out", str(out), *sets],
                              cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=180)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
        assert lines[0].startswith(f"error: Could not write {out}/") and "the disk is full (errno 28)" in lines[0]
        assert f"{out / 'checkpoint.pt'} still holds step 5" in lines[0]
        assert load_checkpoint(out / "checkpoint.pt")["step"] == 5 and temps(out) == []
        assert all(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())
        for events in (out / "tensorboard").glob("events.*"):
            size = events.stat().st_size
            trim_event_file(events)
            assert events.stat().st_size == size, "an event file ends in a partial record"


def test_a_run_folder_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(engine, "load_data", lambda config: loaded.append(1))  # training would start by loading data
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(ConfigError) as err:
        Trainer(tiny(), tmp_path / "a_file")
    assert str(err.value) == (f"The run folder {tmp_path / 'a_file'} cannot be written (it is a file, not a folder "
                              f"(errno 20)): choose another --out.")
    assert loaded == []
    with read_only_folder(tmp_path / "ro") as (folder, cause):
        with pytest.raises(ConfigError) as err:
            Trainer(tiny(), folder / "run")
        assert str(err.value) == f"The run folder {folder / 'run'} cannot be written ({cause}): choose another --out."
        refused = subprocess.run([sys.executable, "-m", "hvae_lib.train", "--preset", "vae_tiny", "--out",
                                  str(folder / "run")], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and refused.stderr.strip() == f"error: {err.value}" and refused.stdout == ""
    assert loaded == []
