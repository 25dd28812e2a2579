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
from hvae_lib.checkpoint import FORMAT, load_checkpoint
from hvae_lib.config import describe, get_preset, override
from hvae_lib.engine import build_data_and_model

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
    first, rest = dry.stdout.split("\n", 1)
    config = override(get_preset("vae_tiny"), ["latent_dim=6", "precision=bf16"])
    _, model = build_data_and_model(config)
    assert first == f"parameters: {sum(p.numel() for p in model.parameters())}"
    assert rest == describe(config)


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
    line = one_error_line(proc.stderr)
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
