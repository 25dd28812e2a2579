"""benchmarks/seeds.py: the three-seed runs behind the chapters' comparisons (benchmarks/seeds*.json)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hvae_lib.models.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def seeds(monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import seeds as module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    # vdvae_tiny (30 steps on 16x16 shapes) stands in for Chapter 6b's ablations and their baseline
    monkeypatch.setitem(module.ABLATIONS, "vdvae_tiny", "a tiny VDVAE")
    monkeypatch.setattr(module, "BASELINES", {"vdvae_tiny"})
    return module


@pytest.mark.slow
def test_runs_two_seeds_records_each_layers_kl_and_reads_finished_runs_again(tmp_path, seeds, capsys):
    results, runs = tmp_path / "results.json", tmp_path / "runs"
    assert seeds.main(["--presets", "vdvae_tiny", "--seeds", "0", "1", "--runs", str(runs), "--results", str(results)]) == 0
    stored = json.loads(results.read_text())
    assert stored["seeds"] == [0, 1] and set(stored["runs"]["vdvae_tiny"]) == {"0", "1"}
    first = stored["runs"]["vdvae_tiny"]
    layers = seeds.Trainer(get_preset("vdvae_tiny"), runs / "vdvae_tiny_seed0", resume=True).model.num_groups
    assert first["0"]["test_bpd"] != first["1"]["test_bpd"]  # another seed, another run
    for record in first.values():
        assert record["ema"] == (get_preset("vdvae_tiny").optim.ema_rate > 0)  # the raw weights scored beside the EMA
        assert 0 < record["test_bpd_raw"] < 9 and (record["ema"] or record["test_bpd_raw"] == record["test_bpd"])
        assert record["cpu_s"] > 0 and record["resumed_at_step"] == 0
        kl = record["kl_per_layer"]  # one mean KL per latent layer, top first, in nats per image
        assert len(kl) == layers
        assert all(k > -1e-4 for k in kl) and sum(kl) > 0
    table = capsys.readouterr().out
    assert "| seed 0 | seed 1 | mean | std | range |" in table and "(`vdvae_tiny`) | " in table

    # finished runs are read, not trained again: the same records, the same KL
    assert seeds.main(["--presets", "vdvae_tiny", "--seeds", "0", "1", "--runs", str(runs), "--results", str(results)]) == 0
    assert json.loads(results.read_text())["runs"]["vdvae_tiny"] == first


def test_an_unknown_preset_is_one_line(tmp_path, seeds, capsys):
    assert seeds.main(["--presets", "no_such_preset", "--results", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no_such_preset" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()
