"""hvae_lib's layering (docs/architecture.md): import-linter's contracts hold, and each one breaks,
naming the import, when a scratch copy of the library gets an import that the rules forbid."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")

sys.path.insert(0, str(ROOT / "tools"))
import architecture  # noqa: E402


def lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))  # root's hvae_lib before the installed one
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def scratch_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "hvae_lib", tmp_path / "hvae_lib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold():
    proc = lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 3 kept, 0 broken." in proc.stdout


# (module to edit, line to append, the contract that must break, what its report must name)
VIOLATIONS = [
    ("models/vae.py", "from hvae_lib.training import engine", "Subpackages import only those below them",
     "hvae_lib.models.vae -> hvae_lib.training.engine"),
    ("data/contract.py", "from hvae_lib.models import build_model", "Subpackages import only those below them",
     "hvae_lib.data.contract -> hvae_lib.models"),
    ("sample.py", "from hvae_lib import evaluate", "Subpackages import only those below them",
     "hvae_lib.sample -> hvae_lib.evaluate"),
    ("training/optim.py", "from hvae_lib.models import nvae", "builds models only through the registry",
     "hvae_lib.training.optim -> hvae_lib.models.nvae"),
    ("data/contract.py", "import hvae_lib.data.shapes", "No import circles", "No cycles are allowed in hvae_lib.data."),
]


@pytest.mark.parametrize("module, line, contract, named", VIOLATIONS, ids=[v[0] + ": " + v[1] for v in VIOLATIONS])
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, contract, named):
    root = scratch_copy(tmp_path)
    path = root / "hvae_lib" / module
    path.write_text(path.read_text() + f"\n{line}  # added by the test\n")
    proc = lint(root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    broken = proc.stdout.split("Broken contracts", 1)[1]
    assert contract in broken and named in broken, broken


def test_the_picture_is_drawn_from_the_imports(tmp_path):
    """docs/architecture.md shows today's imports, and an arrow appears when an import is added."""
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "architecture.py"), "check"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import grimp

    root = scratch_copy(tmp_path)
    before = architecture.generated(grimp.build_graph("hvae_lib", cache_dir=None))
    assert "memory -->" in before and "memory -->|1| probability" not in before
    (root / "hvae_lib" / "memory" / "plan.py").write_text(
        (root / "hvae_lib" / "memory" / "plan.py").read_text() + "\nfrom hvae_lib.probability import gaussian  # noqa\n")
    code = ("import sys, grimp; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]); import architecture; "
            "print(architecture.generated(grimp.build_graph('hvae_lib', cache_dir=None)))")
    after = subprocess.run([sys.executable, "-c", code, str(root), str(ROOT / "tools")], capture_output=True,
                           text=True, timeout=120, cwd=root)
    assert after.returncode == 0, after.stderr
    assert "memory -->|1| probability" in after.stdout
    assert "`memory.plan` → `probability.gaussian`" in after.stdout


def test_top_level_is_small_and_modules_are_short():
    """At most about a dozen entries at the top (subpackages, command lines, the package's face), and
    no module over 400 lines (one concept per file)."""
    entries = [p.name for p in (ROOT / "hvae_lib").iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 17, sorted(entries)  # 14, and the command lines import_nvae, latents and fid
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "hvae_lib").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_every_subpackage_says_what_it_holds_and_for_which_chapters():
    for init in sorted((ROOT / "hvae_lib").rglob("__init__.py")):
        text = init.read_text()
        assert text.startswith('"""'), f"{init} must open with a docstring"
        docstring = text.split('"""')[1]
        assert "Chapter" in docstring or "chapter" in docstring, f"{init}'s docstring should name the chapters that use it"
