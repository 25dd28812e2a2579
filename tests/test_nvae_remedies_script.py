"""benchmarks/nvae_remedies.py: the one-setting mode used for the GPU runs of Chapter 4's search."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "nvae_remedies.py"


def load_script():
    spec = importlib.util.spec_from_file_location("nvae_remedies", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_custom_setting_runs_the_chosen_variant_and_records_it(tmp_path):
    script = load_script()
    out = tmp_path / "r.json"
    script.main(["--set", "train_limit=256", "test_limit=64", "batch_size=16", "lr=0.02", "precision=fp32",
                 "--steps", "3", "--variant", "none", "--out", str(out), "--runs", str(tmp_path / "runs")])
    results = json.loads(out.read_text())
    assert list(results) == ["custom/none"]
    run = results["custom/none"]
    # values parsed as JSON where they can be, strings otherwise; the variant's changes are not in "setting"
    assert run["setting"] == {"train_limit": 256, "test_limit": 64, "batch_size": 16, "lr": 0.02, "precision": "fp32"}
    assert run["steps_done"] == 3 and run["error"] is None
    assert len(run["train_bpd_per_50"]) == 1 and run["test_bpd"] > 0


def test_a_time_limit_stops_training_early(tmp_path):
    script = load_script()
    out = tmp_path / "r.json"
    script.main(["--set", "train_limit=256", "test_limit=64", "batch_size=16", "--steps", "1000", "--variant", "recipe",
                 "--time-limit", "1e-9", "--out", str(out), "--runs", str(tmp_path / "runs")])
    run = json.loads(out.read_text())["custom/recipe"]
    assert run["steps_done"] == 1  # the limit is checked before each step after the first
    assert run["steps"] == 1000  # the schedule stays that of --steps


def test_a_set_item_without_a_value_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_script().main(["--set", "lr", "--out", str(tmp_path / "r.json")])
    assert "KEY=VALUE" in capsys.readouterr().err
