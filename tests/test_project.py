"""The front page cannot rot: README commands, Makefile targets, environment.yml vs pyproject."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_matches_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python == ["python=3.11"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert '-e ".[dev]"' in pip or "-e .[dev]" in pip, "environment.yml must install the project itself"
    listed = sorted(p for p in pip if not p.startswith("-e"))
    assert listed == sorted(pyproject["project"]["dependencies"]), (
        "environment.yml's pip list differs from pyproject.toml's dependencies; copy them across"
    )


def test_torch_is_not_pinned_to_a_cpu_build():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch>=2.4" in deps and "torchvision>=0.19" in deps


def test_readme_commands_are_makefile_targets():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, flags=re.M))
    used = set(re.findall(r"`make ([a-z][\w-]*)", readme)) | set(re.findall(r"^make ([a-z][\w-]*)", readme, flags=re.M))
    assert {"train", "test", "lab", "sync"} <= used
    assert used <= targets, f"README mentions make targets that do not exist: {sorted(used - targets)}"
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_readme_cli_examples_run():
    """Every `python -m hvae_lib.train ... --list-presets/--dry-run` line in the README works."""
    readme = (ROOT / "README.md").read_text()
    lines = re.findall(r"^python -m (hvae_lib\.train [^\n]*(?:--dry-run|--list-presets)[^\n]*)$", readme, flags=re.M)
    assert lines, "the README should show --list-presets and --dry-run"
    for line in lines:
        proc = run_cli(*line.split())
        assert proc.returncode == 0, f"README command failed: python -m {line}\n{proc.stderr}"


def test_list_presets_one_per_line():
    proc = run_cli("hvae_lib.train", "--list-presets")
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert "vae_fashion" in names and "vae_tiny" in names
    assert all(len(line.split(maxsplit=1)) == 2 for line in proc.stdout.splitlines())


def test_readme_states_the_make_train_result():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"\d\.\d+ bits/dim", readme), "README must state the bits/dim make train reaches"
