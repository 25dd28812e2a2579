"""The recipe for batch, precision and checkpointing (Chapter 5), and the GPU results file it reads."""
import json
import re
import sys
from pathlib import Path

import pytest

from hvae_lib.memory.plan import BYTES_PER_PARAMETER, GIB, SettingCost, fit_costs, read_gpu_results, suggest_settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS_JSON = ROOT / "benchmarks" / "gpu_results.json"


def run(setting, batch, peak_gib, step_ms, precision="fp32", checkpointing=False, **extra):
    return {"preset": "m", "setting": setting, "precision": precision, "grad_checkpointing": checkpointing,
            "batch": batch, "peak_gib": peak_gib, "step_ms": step_ms, **extra}


def test_memory_line_and_largest_batch():
    cost = SettingCost("fp32", "fp32", False, fixed_bytes=2 * GIB, per_image_bytes=0.5 * GIB)
    assert cost.memory(10) == 7 * GIB
    assert cost.max_batch(7 * GIB) == 10 and cost.max_batch(6.99 * GIB) == 9 and cost.max_batch(GIB) == 0
    assert cost.step_seconds(10) is None


def test_fit_costs_recovers_lines_and_handles_single_batches():
    rows = [run("a", 32, 2 + 32 * 0.25, 1000), run("a", 64, 2 + 64 * 0.25, 1000), run("a", 128, 2 + 128 * 0.25, 1000),
            run("b", 32, 10.0, 320, "bf16", True),
            run("a", 256, None, None, out_of_memory=True),  # out of memory: no peak, left out
            run("b", 64, 99.0, 1, "bf16", True, superseded="an old measurement")]  # left out
    a, b = fit_costs(rows, num_parameters=10**6)
    assert a.fixed_bytes == pytest.approx(2 * GIB) and a.per_image_bytes == pytest.approx(0.25 * GIB)
    assert a.step_seconds(32) == pytest.approx(1.0) and a.step_seconds(1024) == pytest.approx(1.0)  # host-bound: flat
    assert (b.precision, b.grad_checkpointing) == ("bf16", True)
    assert b.fixed_bytes == BYTES_PER_PARAMETER * 10**6
    assert b.per_image_bytes == pytest.approx((10 * GIB - BYTES_PER_PARAMETER * 10**6) / 32)
    assert b.step_seconds(64) == pytest.approx(0.64)  # one timed batch: proportional to the batch
    with pytest.raises(ValueError, match="one batch size only"):
        fit_costs([run("c", 8, 1.0, 10)])


def test_suggest_prefers_one_gpu_then_the_fastest_setting_that_fits():
    fast = SettingCost("fast", "bf16", False, 2 * GIB, 1 * GIB, 1.0, 0.0)
    lean = SettingCost("lean", "bf16", True, 2 * GIB, 0.1 * GIB, 1.5, 0.0)
    fp32 = SettingCost("fp32", "fp32", True, 2 * GIB, 0.2 * GIB, 3.0, 0.0)
    gpu = 20 * GIB  # 18 GiB usable with the default 10% headroom
    s = suggest_settings(gpu, [lean, fast, fp32], global_batch=16)
    assert (s.cost.setting, s.batch_per_gpu, s.num_gpus) == ("fast", 16, 1) and s.memory_bytes == 18 * GIB
    assert {a[0] for a in s.alternatives} == {"lean", "fp32"}
    s = suggest_settings(gpu, [lean, fast, fp32], global_batch=32)
    assert (s.cost.setting, s.batch_per_gpu, s.num_gpus) == ("lean", 32, 1)  # fast needs 34 GiB
    s = suggest_settings(gpu, [lean, fast, fp32], global_batch=1000)
    assert (s.cost.setting, s.batch_per_gpu, s.num_gpus) == ("lean", 143, 7)  # 160 per GPU at most
    s = suggest_settings(gpu, [lean, fast, fp32], global_batch=32, bf16_supported=False)
    assert (s.cost.setting, s.num_gpus) == ("fp32", 1)
    with pytest.raises(ValueError, match="even one image"):
        suggest_settings(GIB, [lean, fast], global_batch=1)
    with pytest.raises(ValueError, match="headroom"):
        suggest_settings(gpu, [lean], global_batch=1, headroom=1.0)


def test_read_gpu_results_says_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="engine_gpu.py --json"):
        read_gpu_results(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="'runs' list"):
        read_gpu_results(tmp_path / "bad.json")
    (tmp_path / "short.json").write_text(json.dumps({"runs": [{"preset": "x", "batch": 1}]}))
    with pytest.raises(ValueError, match="run 0 lacks setting"):
        read_gpu_results(tmp_path / "short.json")


def cifar_runs():
    return [r for r in read_gpu_results(RESULTS_JSON) if r["preset"] == "nvae_cifar10"]


def test_the_committed_gpu_results_are_linear_in_the_batch_and_give_the_readme_recipe():
    runs = cifar_runs()
    costs = {c.setting: c for c in fit_costs(runs, num_parameters=runs[0]["parameters"])}
    for r in runs:  # the memory lines pass through every measured peak of their setting within 3%
        if r["peak_gib"] is not None and not r.get("superseded"):
            assert costs[r["setting"]].memory(r["batch"]) == pytest.approx(r["peak_gib"] * GIB, rel=0.03)
    h100 = suggest_settings(79 * GIB, list(costs.values()), global_batch=256)
    assert (h100.cost.setting, h100.batch_per_gpu, h100.num_gpus) == ("bf16 + grad checkpointing", 256, 1)


def markdown_rows(text):
    """(batch, setting, step ms, images/s, peak GiB) of RESULTS.md's GPU tables that have a batch column."""
    pattern = r"^\| (\d+) \| ([^|]+?) \| (\d+|out of memory) \| ?(\d*) ?\| (> \d+|[\d.]+) \|$"
    return [m.groups() for m in re.finditer(pattern, text, flags=re.M)]


def test_gpu_results_json_holds_exactly_the_figures_of_results_md():
    rows = markdown_rows((ROOT / "benchmarks" / "RESULTS.md").read_text())
    assert len(rows) >= 15  # the CIFAR-10 and MNIST tables
    runs = read_gpu_results(RESULTS_JSON)
    for batch, setting, step, images, peak in rows:
        matches = [r for r in runs if r["batch"] == int(batch) and r["setting"] == setting
                   and r["date"] == "2026-11-22" and not r.get("note", "").startswith("re-measured")]
        assert matches, f"RESULTS.md row (batch {batch}, {setting}) is missing from {RESULTS_JSON.name}"
        r = matches[0]
        if step == "out of memory":
            assert r["out_of_memory"] and r["peak_gib"] is None
        else:
            assert (r["step_ms"], r["images_per_s"], r["peak_gib"]) == (int(step), int(images), float(peak))


def test_engine_gpu_json_writer_merges_by_preset_batch_setting_device_and_date(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import engine_gpu
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    device = {"device": "GPU X", "device_total_gib": 40.0, "torch": "t", "date": "2030-01-01", "cudnn_benchmark": False}
    row = {"params": 1000, "step_ms": 12.345, "img_s": 81.0, "peak_gib": 1.23456, "skipped": 0}
    path = tmp_path / "results.json"
    first = [engine_gpu.json_run("m", 1000, 8, "fp32", row, 5, device), engine_gpu.json_run("m", 1000, 8, "bf16", None, 5, device)]
    engine_gpu.write_json(path, first)
    again = engine_gpu.json_run("m", 1000, 8, "fp32", {**row, "step_ms": 10.0}, 5, device)
    engine_gpu.write_json(path, [again])
    runs = read_gpu_results(path)
    assert len(runs) == 2
    oom = next(r for r in runs if r["setting"] == "bf16")
    assert oom["out_of_memory"] and oom["peak_gib"] is None and oom["precision"] == "bf16"
    fp32 = next(r for r in runs if r["setting"] == "fp32")
    assert fp32["step_ms"] == 10.0 and fp32["peak_gib"] == 1.235 and fp32["grad_checkpointing"] is False
    assert fp32["command"].startswith("python3 ") and fp32["device"] == "GPU X"
    assert [line.startswith('  {"preset"') for line in path.read_text().splitlines()].count(True) == 2  # a run per line
