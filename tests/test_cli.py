"""The command lines: train (and resume), --dry-run, --list-presets, evaluate, sample, and their errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from hvae_lib import evaluate, sample, train
from hvae_lib.config import describe, override
from hvae_lib.models.presets import get_preset
from hvae_lib.training.checkpoint import FORMAT, load_checkpoint
from hvae_lib.training.engine import build_data_and_model

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def sets(*assignments):
    return sum((["--set", a] for a in assignments), [])


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.slow
def test_list_presets_and_dry_run():
    listed = cli("hvae_lib.train", "--list-presets")
    assert listed.returncode == 0
    rows = [line.split(maxsplit=1) for line in listed.stdout.splitlines()]
    assert {"vae_tiny", "vae_fashion"} <= {row[0] for row in rows} and all(len(row) == 2 for row in rows)
    dry = cli("hvae_lib.train", "--preset", "vae_tiny", "--dry-run", *sets("latent_dim=6", "precision=bf16"))
    assert dry.returncode == 0, dry.stderr
    first, memory, state, rest = dry.stdout.split("\n", 3)
    config = override(get_preset("vae_tiny"), ["latent_dim=6", "precision=bf16"])
    _, model = build_data_and_model(config)
    assert first == f"parameters: {sum(p.numel() for p in model.parameters())}"
    assert memory.startswith("activation memory of one training step at batch 32: ") and "in bf16" in memory
    assert state.startswith("weights, gradients, optimiser state: ") and state.endswith(" MiB")
    assert rest == describe(config)


@pytest.mark.slow
def test_dry_run_of_the_paper_preset_needs_no_dataset(tmp_path):
    """`--preset nvae_cifar10 --dry-run` on a machine without CIFAR-10 (an empty data folder)."""
    proc = subprocess.run([sys.executable, "-m", "hvae_lib.train", "--preset", "nvae_cifar10", "--dry-run"], cwd=ROOT,
                          env={**ENV, "HVAE_DATA_ROOT": str(tmp_path)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "parameters: 130852480"  # the official code's count (see presets/nvae.py)
    assert lines[1].startswith("activation memory of one training step at batch 256: ") and "GiB" in lines[1]
    assert "data.name = 'cifar10'" in lines and list(tmp_path.iterdir()) == []


def test_dry_run_memory_is_the_measured_memory_at_the_full_batch(monkeypatch):
    """The extrapolation from batches 2 and 4 against a direct count at the preset's batch of 32; and
    no data is read (loading it would fail here)."""
    from hvae_lib import data
    from hvae_lib.memory.saved_tensors import count_saved_tensors
    from hvae_lib.probability.objectives import elbo
    from hvae_lib.training import data as training_data

    def no_data(*args, **kwargs):
        raise AssertionError("the dry run read the dataset")

    monkeypatch.setattr(data, "load_dataset", no_data)
    monkeypatch.setattr(training_data, "load_dataset", no_data)
    config = get_preset("lvae_tiny")
    fixed, per_image, model = train.activation_bytes(config)
    x = torch.rand(32, 3, 16, 16)  # (B, C, H, W)
    _, direct = count_saved_tensors(lambda: elbo(model(x), 768).loss, model.parameters())
    assert fixed + 32 * per_image == pytest.approx(direct.activation_bytes, rel=0.02)
    assert per_image > 0


@pytest.mark.slow
def test_a_bad_key_is_one_error_line_without_traceback():
    proc = cli("hvae_lib.train", "--preset", "vae_tiny", "--dry-run", *sets("max_step=5"))
    assert proc.returncode != 0 and proc.stdout == ""
    line = one_error_line(proc.stderr)
    assert "'max_step'" in line and "optim.max_steps" in line and "valid keys" in line


@pytest.mark.parametrize("argv,expected", [
    (sets("max_steps=ten"), "expects an int, got 'ten'"),
    (sets("precision=fp8"), "must be one of fp32, bf16, fp16"),
    (sets("num_downsamples=5"), "multiples of 32"),  # the model's own complaint, as a config error
    (["--preset", "nope"], "available presets"),
])
def test_config_errors_in_process(argv, expected, capsys):
    argv = argv if argv[0] == "--preset" else ["--preset", "vae_tiny", *argv]
    assert train.main([*argv, "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert expected in one_error_line(captured.err) and captured.out == ""


@pytest.mark.slow
def test_train_then_the_same_command_resumes(tmp_path):
    out = tmp_path / "run"
    first = cli("hvae_lib.train", "--preset", "vae_tiny", "--out", out, *sets("max_steps=6", "log_every=3", "ema_rate=0.9"))
    assert first.returncode == 0, first.stderr
    assert {"config", "checkpoint.pt", "metrics.jsonl", "samples.png", "results.json"} <= {p.name for p in out.iterdir()}
    assert list((out / "tensorboard").glob("events.out.tfevents.*")) and "vae on shapes" in first.stderr  # the bar
    assert json.loads(first.stdout.strip().splitlines()[-1])["step"] == 6
    # The same command with a longer run resumes from step 6.
    again = cli("hvae_lib.train", "--preset", "vae_tiny", "--out", out, *sets("max_steps=9", "log_every=3", "ema_rate=0.9"))
    assert again.returncode == 0, again.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == [3, 6, 9] and load_checkpoint(out / "checkpoint.pt")["step"] == 9


@pytest.mark.slow
def test_evaluate_prints_one_json_line_and_sample_writes_a_grid(tmp_path):
    out = tmp_path / "run"
    assert train.main(["--preset", "vae_tiny", "--out", str(out), *sets("max_steps=3", "quiet=true", "ema_rate=0.9")]) == 0
    evaluated = cli("hvae_lib.evaluate", out / "checkpoint.pt", "--iw-samples", "3")
    assert evaluated.returncode == 0, evaluated.stderr
    assert len(evaluated.stdout.splitlines()) == 1 and "evaluate" in evaluated.stderr  # the bar is on stderr
    result = json.loads(evaluated.stdout)
    assert {"neg_elbo_nats", "neg_elbo_bpd", "iw_nats", "iw_bpd", "iw_samples", "bit_depth", "n_images"} <= set(result)
    assert result["iw_samples"] == 3 and result["bit_depth"] == 8 and result["n_images"] == 128
    assert result["iw_nats"] <= result["neg_elbo_nats"] + 5  # the IW bound is at least as tight, up to noise
    assert result["neg_elbo_bpd"] == pytest.approx(result["neg_elbo_nats"] / (768 * 0.6931471805599453))

    png = tmp_path / "grid.png"
    sampled = cli("hvae_lib.sample", out / "checkpoint.pt", "--n", "64", "--temperature", "0.8", "--out", png)
    assert sampled.returncode == 0, sampled.stderr
    assert Image.open(png).size == (8 * 18 + 2, 8 * 18 + 2)  # 8 x 8 images of 16 px, 2 px padding


def test_evaluate_is_deterministic_for_a_seed(tmp_path, capsys):
    train.main(["--preset", "vae_tiny", "--out", str(tmp_path), *sets("max_steps=2", "quiet=true", "eval_every=0")])
    capsys.readouterr()
    runs = []
    for _ in range(2):
        assert evaluate.main([str(tmp_path / "checkpoint.pt"), "--iw-samples", "2", "--limit", "32", "--quiet"]) == 0
        runs.append(capsys.readouterr().out)
    assert runs[0] == runs[1] and json.loads(runs[0])["n_images"] == 32


@pytest.mark.slow
def test_a_run_that_skips_every_update_exits_non_zero_and_says_what_to_change(tmp_path):
    out = tmp_path / "run"
    assert train.main(["--preset", "vae_tiny", "--out", str(out), *sets("max_steps=10", "quiet=true", "eval_every=0")]) == 0
    proc = cli("hvae_lib.train", "--preset", "vae_tiny", "--out", out,
               *sets("max_steps=40", "quiet=true", "skip_threshold=1e-9", "max_consecutive_skips=5"))
    assert proc.returncode != 0
    schedule, line = proc.stderr.strip().split("\n")  # resuming with another max_steps says so first
    assert schedule.startswith("Resuming at step 10 with max_steps=40 instead of 10: the cosine schedule stretches")
    line = one_error_line(line)
    assert "5 updates in a row were skipped" in line and "skip_threshold" in line and "last good weights" in line
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 10


class MakesAFile:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_errors_are_one_line(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "trap": MakesAFile(tmp_path / "marker")}, evil)
    foreign = tmp_path / "foreign.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), foreign)
    for main, argv, expected in [
        (evaluate.main, [str(evil)], "Refused to load"),
        (sample.main, [str(evil), "--out", str(tmp_path / "x.png")], "Refused to load"),
        (evaluate.main, [str(foreign)], "not an hvae_lib checkpoint"),
        (evaluate.main, [str(tmp_path / "missing.pt")], "No checkpoint"),
    ]:
        assert main(argv) == 2
        assert expected in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "marker").exists() and not (tmp_path / "x.png").exists()
    # Resuming a run folder with other model keys: one sentence naming them.
    out = tmp_path / "run"
    assert train.main(["--preset", "vae_tiny", "--out", str(out), *sets("max_steps=2", "quiet=true", "eval_every=0")]) == 0
    capsys.readouterr()
    assert train.main(["--preset", "vae_tiny", "--out", str(out), *sets("latent_dim=8")]) == 2
    assert "model.latent_dim=4 there but 8 here" in one_error_line(capsys.readouterr().err)
    (out / "checkpoint.pt").write_bytes(b"garbage")
    assert train.main(["--preset", "vae_tiny", "--out", str(out)]) == 2
    assert "corrupted" in one_error_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------- every argument checked


def _checked_options(parser):
    """(option, its Range) for every option whose type is a range-checking parser."""
    return [(a.option_strings[0], a.type.range) for a in parser._actions if hasattr(a.type, "range")]


@pytest.mark.parametrize("module", [evaluate, sample], ids=["evaluate", "sample"])
def test_every_numeric_argument_declares_its_range(module):
    """A new int or float argument without a range fails here: give it ``type=Range(...).parser(int)``."""
    for action in module.build_parser()._actions:
        assert action.type not in (int, float), f"{action.option_strings}: declare its range (see hvae_lib.config.ranges)"
    assert len(_checked_options(module.build_parser())) >= 4


@pytest.mark.parametrize("module", [evaluate, sample], ids=["evaluate", "sample"])
def test_every_argument_refuses_a_value_outside_its_range_in_one_line(module, capsys, tmp_path):
    for option, declared in _checked_options(module.build_parser()):
        kind = str if declared.one_of or declared.pattern else (int if option != "--temperature" else float)
        for bad in declared.outside(kind):
            with pytest.raises(SystemExit) as exit_:
                module.main([str(tmp_path / "never_read.pt"), option, str(bad)])
            line = one_error_line(capsys.readouterr().err)
            assert exit_.value.code == 2 and f"argument {option}: must be " in line and f"{declared.describe()}, got {bad}" in line


def test_sample_refuses_an_output_that_is_not_an_image_and_a_device_that_is_not_here(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sample.main([str(tmp_path / "x.pt"), "--out", str(tmp_path / "grid.txt")])
    assert "must end in an image extension such as .png or .jpg" in one_error_line(capsys.readouterr().err)
    if not torch.cuda.is_available():
        assert sample.main([str(tmp_path / "x.pt"), "--device", "cuda"]) == 2
        assert "no CUDA device is visible" in one_error_line(capsys.readouterr().err)


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused(monkeypatch, tmp_path):
    from hvae_lib.config.ranges import ConfigError
    from hvae_lib.training import engine

    monkeypatch.setattr(engine.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(engine.dist, "get_world_size", lambda: 3)
    monkeypatch.setattr(engine.dist, "get_rank", lambda: 0)
    with pytest.raises(ConfigError) as err:
        engine.Trainer(get_preset("vae_tiny"), tmp_path)  # its global batch is 32
    assert str(err.value) == ("Config key optim.batch_size=32 (the global batch) does not split over 3 processes: "
                              "use a multiple of 3, such as 30 or 33.")
    assert list(tmp_path.iterdir()) == [], "refused before any work"


def test_resuming_with_another_max_steps_says_how_the_schedule_changes(tmp_path, capsys):
    quiet = ["quiet=true", "eval_every=0", "sample_every=0"]
    assert train.main(["--preset", "vae_tiny", "--out", str(tmp_path), *sets("max_steps=10", *quiet)]) == 0
    capsys.readouterr()
    assert train.main(["--preset", "vae_tiny", "--out", str(tmp_path), *sets("max_steps=12", "schedule=constant", *quiet)]) == 0
    assert capsys.readouterr().err == "", "a constant rate does not change"
    assert train.main(["--preset", "vae_tiny", "--out", str(tmp_path), *sets("max_steps=8", *quiet)]) == 0
    assert capsys.readouterr().err == ("The checkpoint is at step 12, at or past max_steps=8: nothing is left to train, "
                                       "so the run only saves and evaluates.\n")
    assert train.main(["--preset", "vae_tiny", "--out", str(tmp_path), *sets("max_steps=14", "schedule_steps=8", *quiet)]) == 0
    assert capsys.readouterr().err == "", "a cosine whose length is given apart keeps its schedule"
    assert train.main(["--preset", "vae_tiny", "--out", str(tmp_path), *sets("max_steps=30", *quiet)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("Resuming at step 14 with max_steps=30 instead of 14: the cosine schedule stretches from 8 to "
                          "30 steps, so the learning rate goes from 0.0001 to ") and err.count("\n") == 1
    assert err.endswith(" (--set schedule_steps=8 keeps the old schedule).\n")


# ----------------------------------------------------------------------------- progress: a bar in a terminal, lines in a log


def test_in_a_log_file_progress_is_plain_lines(tmp_path, capsys):
    assert train.main(["--preset", "vae_tiny", "--out", str(tmp_path), *sets("max_steps=12", "eval_every=0")]) == 0
    err = capsys.readouterr().err  # pytest's capture is not a terminal, like a file or a CI log
    lines = err.splitlines()
    assert "\r" not in err and len(lines) == 2, err  # the first record, then the last (30 s apart at most)
    assert lines[0].startswith("vae on shapes: step 5/12 (42%) loss=") and "skipped=0 img_s=" in lines[0]
    assert lines[1].startswith("vae on shapes: step 12/12 (100%) loss=") and " eta 0:00:00" in lines[1]


@pytest.mark.slow
def test_in_a_terminal_progress_is_a_bar(tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    proc = subprocess.Popen([sys.executable, "-m", "hvae_lib.train", "--preset", "vae_tiny", "--out", str(tmp_path),
                             *sets("max_steps=6", "eval_every=0")], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=120)
    os.close(leader)
    output = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0 and "\r" in output and "6/6" in output and "step 6/6" not in output
