"""The notebook pipeline (tools/notebooks.py) on a throwaway git repository.

Most tests call the CLI's ``main`` in-process: importing jupytext and nbgrader costs ~2.5 s,
paid once here instead of once per command. One test runs the real CLI on a fresh clone, as CI does.
"""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from jupytext.cli import jupytext as jupytext_cli

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "notebooks.py"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="the pipeline's check needs git")

_spec = importlib.util.spec_from_file_location("notebooks_tool", TOOL)
notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(notebooks)


def graded(name, test, points=1, hidden=True):
    """An exercise and its grade cell, as a chapter writes them (hvae_lib/exercises.py)."""
    hidden_tests = f"### BEGIN HIDDEN TESTS\n{test}\n### END HIDDEN TESTS\n" if hidden else ""
    return f'''

# %% nbgrader={{"grade": true, "grade_id": "{name}_points", "locked": true, "points": {points}, "schema_version": 3, "solution": false, "task": false}}
print("checked {name}")
{hidden_tests}'''


def exercise(n, name, signature, body, test):
    return f'''

# %% nbgrader={{"grade": false, "grade_id": "ex0{n}_{name}", "locked": false, "schema_version": 3, "solution": true, "task": false}}
def {signature}:
    ### BEGIN SOLUTION
    {body}
    ### END SOLUTION
''' + graded(f"ex0{n}_{name}", test)


# Two exercises "of substance" (tools/notebooks.py counts 12 or more lines of solution), as the
# course's rules ask of every chapter; the demo's answers are long ways to multiply and negate.
SUBSTANTIAL_MUL = "\n    ".join([
    "result = 0", "count = abs(b)", "for _ in range(count):", "    result = result + a",
    "if b < 0:", "    result = -result", "check = result", "if check != a * b:",
    "    raise ValueError('mul went wrong')", "answer = check", "answer = answer + 0", "return answer"])
SUBSTANTIAL_NEG = "\n    ".join([
    "result = 0", "count = abs(a)", "step = -1 if a > 0 else 1", "for _ in range(count):",
    "    result = result + step", "check = result", "if check != -a:",
    "    raise ValueError('neg went wrong')", "answer = check", "answer = answer * 1",
    "answer = answer + 0", "return answer"])

# The demo is a gradable chapter (tools/notebooks.py's grading_problems): four exercises with
# grade cells (two of substance), one used afterwards, one prediction revealed, one derivation.
# The first exercise's plain check cell sits before its grade cell, as helper cells may.
GRADED = (graded("ex01_add", "assert add(-1, 1) == 0")
          + exercise(2, "sub", "sub(a, b)", "return a - b", "assert sub(3, 1) == 2")
          + exercise(3, "mul", "mul(a, b)", SUBSTANTIAL_MUL, "assert mul(3, 2) == 6")
          + exercise(4, "neg", "neg(a)", SUBSTANTIAL_NEG, "assert neg(3) == -3")
          + '''

# %% nbgrader={"grade": false, "grade_id": "predict01_sum", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_sum():
    ### BEGIN SOLUTION
    return 5
    ### END SOLUTION


# %%
def use_if_correct(name, mine, library, ok):
    return mine if ok else library


def reveal_prediction(question, guess, measured):
    try:
        print(question, guess(), measured)
    except NotImplementedError:
        print(question, measured)


total = use_if_correct("add", add, lambda a, b: a + b, False)(2, 3)
reveal_prediction("2 + 3", predicted_sum, total)

# %% [markdown] nbgrader={"grade": true, "grade_id": "derive01_cancel", "locked": false, "points": 1, "schema_version": 3, "solution": true, "task": false}
# **Model answer.** (a + b) - b = a, since addition is associative and b - b = 0.
#
# **Rubric (1 point):** 1 point for the cancellation with its reason.
''')
DERIVATION_ANSWER = """# **Model answer.** (a + b) - b = a, since addition is associative and b - b = 0.
#
# **Rubric (1 point):** 1 point for the cancellation with its reason.
"""
EXERCISE_HEADER = (
    '# %% nbgrader={"grade": false, "grade_id": "ex01_add", "locked": false, '
    '"schema_version": 3, "solution": true}'
)
DEMO = f'''# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Pipeline demo
#
# Implement `add`; the worksheet has its body removed.

# %%
import os

smoke_test = "HVAE_SMOKE" in os.environ
print("smoke" if smoke_test else "full")

{EXERCISE_HEADER}
def add(a, b):
    """Return a + b."""
    ### BEGIN SOLUTION
    return a + b
    ### END SOLUTION


# %%
try:
    assert add(2, 3) == 5
    print("correct")
except NotImplementedError:
    print("not done yet")
{GRADED}'''
PAIRED = ["chapters/01_demo.ipynb", "chapters/01_demo.py", "solutions/01_demo.ipynb"]


def git(repo, *args):
    identity = ["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    return subprocess.run(["git", *identity, *args], cwd=repo, check=True, capture_output=True, text=True)


def commit_all(repo):
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "sync")


def cli(repo, *args):
    """Run ``python tools/notebooks.py --root repo ARGS`` in-process; return its exit code."""
    return notebooks.main(["--root", str(repo), *args])


def snapshot(repo):
    return {p.relative_to(repo).as_posix(): p.read_bytes() for p in sorted(repo.glob("*/01_demo.*"))}


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "course"
    (repo / "solutions").mkdir(parents=True)
    shutil.copy(REPO / "jupytext.toml", repo / "jupytext.toml")
    (repo / "solutions" / "01_demo.py").write_text(DEMO, encoding="utf-8")
    git(repo, "init", "-q")
    return repo


@pytest.fixture
def synced(repo):
    assert cli(repo, "sync") == 0
    commit_all(repo)
    return repo


def test_sync_builds_worksheet_and_pairs(repo, capsys):
    assert cli(repo, "sync") == 0
    assert sorted(capsys.readouterr().out.split()[1::2]) == sorted(PAIRED)

    worksheet = (repo / "chapters/01_demo.py").read_text()
    assert "# YOUR CODE HERE\n    raise NotImplementedError()" in worksheet
    assert "return a + b" not in worksheet and "SOLUTION" not in worksheet and "HIDDEN" not in worksheet
    # Identical to the solution except for the cleared regions and the removed hidden tests.
    assert worksheet.replace("    # YOUR CODE HERE\n    raise NotImplementedError()\n", "") == re.sub(
        r"    ### BEGIN SOLUTION\n.*?    ### END SOLUTION\n|### BEGIN HIDDEN TESTS\n.*?### END HIDDEN TESTS\n", "",
        DEMO.replace(DERIVATION_ANSWER, "# YOUR ANSWER HERE\n"), flags=re.S)  # the derivation's answer too

    for folder in ("solutions", "chapters"):
        nb = nbformat.read(repo / folder / "01_demo.ipynb", as_version=4)
        nbformat.validate(nb)
        exercise = nb.cells[2]
        assert exercise.metadata.nbgrader["grade_id"] == "ex01_add"
        assert exercise.metadata.nbgrader["solution"] is True
        assert nb.metadata.kernelspec.name == "python3"
    chapter = nbformat.read(repo / "chapters/01_demo.ipynb", as_version=4)
    assert all(c.outputs == [] and c.execution_count is None for c in chapter.cells if c.cell_type == "code")


def test_sync_is_byte_stable(repo, capsys):
    assert cli(repo, "sync") == 0
    first = snapshot(repo)
    capsys.readouterr()
    assert cli(repo, "sync") == 0
    assert snapshot(repo) == first
    assert "Nothing to do" in capsys.readouterr().out
    assert all(text.endswith(b"\n") for text in first.values())
    ids = [c["id"] for c in json.loads(first["solutions/01_demo.ipynb"])["cells"]]
    assert ids == [f"cell-{i}" for i in range(len(ids))]  # deterministic, not random

    # The jupytext CLI that an author may run by hand agrees byte for byte: no flip-flopping.
    for py in ("solutions/01_demo.py", "chapters/01_demo.py"):
        assert jupytext_cli(["--quiet", "--to", "ipynb", "--update", str(repo / py)]) in (0, None)
    assert snapshot(repo) == first


def test_check_detects_stale_notebooks(synced, capsys):
    assert cli(synced, "check") == 0

    source = synced / "solutions/01_demo.py"
    source.write_text(source.read_text().replace("return a + b", "return b + a"))
    capsys.readouterr()
    assert cli(synced, "check") == 1
    message = capsys.readouterr().err
    assert "Notebooks are out of sync with solutions/*.py" in message
    assert "Run `make sync` and commit the result." in message
    for path in ["solutions/01_demo.ipynb", "solutions/01_demo.py"]:
        assert path in message
    assert "chapters/" not in message  # the edit was inside the solution region: worksheet unchanged

    assert cli(synced, "sync") == 0
    commit_all(synced)
    assert cli(synced, "check") == 0


def test_check_passes_on_a_fresh_clone_with_the_real_cli(synced, tmp_path):
    # A clone gives every file a new mtime: the pipeline must not depend on timestamps.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(synced), str(clone)], check=True)
    result = subprocess.run([sys.executable, str(TOOL), "--root", str(clone), "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert git(clone, "status", "--porcelain").stdout == ""


@pytest.mark.parametrize("damage", ["edit", "delete", "untracked"])
def test_check_detects_a_broken_pair(synced, damage, capsys):
    if damage == "edit":  # e.g. someone ran the worksheet in Jupyter and saved the .ipynb only
        path = synced / "chapters/01_demo.ipynb"
        nb = nbformat.read(path, as_version=4)
        nb.cells[3].source = "print('edited by hand')"
        nbformat.write(nb, path)
        git(synced, "commit", "-q", "-am", "edit the worksheet by hand")  # uncommitted, sync just overwrites it
        expected = "chapters/01_demo.ipynb"
    elif damage == "delete":
        (synced / "chapters/01_demo.ipynb").unlink()
        git(synced, "commit", "-q", "-am", "lose the pair")
        expected = "chapters/01_demo.ipynb"
    else:  # a new solution that was never synced nor committed
        shutil.copy(synced / "solutions/01_demo.py", synced / "solutions/02_more.py")
        expected = "chapters/02_more.py"
    assert cli(synced, "check") == 1
    assert expected in capsys.readouterr().err


def test_sync_removes_stale_chapters(synced, capsys):
    (synced / "solutions/01_demo.py").unlink()
    (synced / "solutions/01_demo.ipynb").unlink()
    assert cli(synced, "sync") == 0
    assert not list((synced / "chapters").glob("01_demo.*"))
    assert "removed chapters/01_demo.py" in capsys.readouterr().out


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("def add(a, b):\n", "def add(a, b):\n", "Duplicate grade id: ex01_add"),  # cell appended twice
        ("    ### END SOLUTION\n", "", "no end solution statement found"),
        ("# Implement `add`", "# Everything after BEGIN SOLUTION goes: implement `add`", "markers even in prose"),
        ('    print("correct")\n', '    print("correct")  # END SOLUTION\n', "without its 'BEGIN SOLUTION'"),
        ("#   kernelspec:", "#   kernelspec_typo:", "has no kernelspec header"),
    ],
    ids=["duplicate-grade-id", "missing-end", "marker-in-markdown", "stray-end", "no-kernelspec"],
)
def test_sync_rejects_bad_solutions(repo, old, new, expected, capsys):
    path = repo / "solutions/01_demo.py"
    text = path.read_text()
    if old == new:  # duplicate the exercise cell, grade_id included
        exercise = text[text.index(EXERCISE_HEADER) : text.index("# %%\ntry")]
        text = text.replace(exercise, exercise + exercise.replace("def add", "def add_again"))
    else:
        assert old in text
        text = text.replace(old, new)
    path.write_text(text)
    assert cli(repo, "sync") == 1
    err = capsys.readouterr().err
    assert "solutions/01_demo.py" in err and expected in err


def test_outputs_survive_sync_when_source_unchanged(synced):
    path = synced / "solutions/01_demo.ipynb"
    nb = nbformat.read(path, as_version=4)
    check_cell = nb.cells[3]
    check_cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="correct\n")]
    check_cell.execution_count = 7
    nbformat.write(nb, path)

    source = synced / "solutions/01_demo.py"  # edit another cell, so that sync has work to do
    source.write_text(source.read_text().replace("# # Pipeline demo", "# # Pipeline demo, revised"))
    assert cli(synced, "sync") == 0
    kept = nbformat.read(path, as_version=4).cells[3]
    assert kept.outputs[0].text == "correct\n" and kept.execution_count == 7
    assert kept.id == check_cell.id
    assert nbformat.read(synced / "chapters/01_demo.ipynb", as_version=4).cells[3].outputs == []


def test_worksheet_executes_and_reports_not_done(synced):
    from nbclient import NotebookClient

    nb = nbformat.read(synced / "chapters/01_demo.ipynb", as_version=4)
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    assert nb.cells[3].outputs[0].text == "not done yet\n"


def test_execute_refreshes_solution_outputs_in_full_mode(synced, monkeypatch, capsys):
    monkeypatch.setenv("HVAE_SMOKE", "1")  # execute must unset it: outputs are from full mode
    assert cli(synced, "execute", "solutions/01_demo.ipynb") == 0
    assert "executed solutions/01_demo.ipynb in" in capsys.readouterr().out

    nb = nbformat.read(synced / "solutions/01_demo.ipynb", as_version=4)
    assert nb.cells[1].outputs[0].text == "full\n"
    assert nb.cells[3].outputs[0].text == "correct\n"
    assert all("execution" not in c.metadata for c in nb.cells)
    executed = snapshot(synced)
    assert cli(synced, "sync") == 0 and snapshot(synced) == executed  # sync keeps what execute wrote
    assert cli(synced, "execute", "solutions/01_demo.ipynb") == 0
    assert snapshot(synced) == executed  # re-running gives no diff when outputs are the same

    assert cli(synced, "execute", "chapters/01_demo.ipynb") == 1
    assert "takes solution notebooks" in capsys.readouterr().err


def test_worksheet_drops_hidden_tests_and_keeps_visible_checks(repo):
    grade_header = ('# %% nbgrader={"grade": true, "grade_id": "ex01_add_test", "locked": true, "points": 2, '
                    '"schema_version": 3, "solution": false, "task": false}')
    graded = f'''{grade_header}
print("visible check")
### BEGIN HIDDEN TESTS
assert add(-1, 1) == 0
### END HIDDEN TESTS
'''
    source = repo / "solutions/01_demo.py"
    source.write_text(source.read_text() + "\n\n" + graded)
    assert cli(repo, "sync") == 0
    worksheet = (repo / "chapters/01_demo.py").read_text()
    assert 'print("visible check")' in worksheet and grade_header in worksheet
    assert "assert add(-1, 1)" not in worksheet and "HIDDEN" not in worksheet
    solution = nbformat.read(repo / "solutions/01_demo.ipynb", as_version=4)
    assert "assert add(-1, 1) == 0" in solution.cells[-1].source
    assert solution.cells[-1].metadata.nbgrader["points"] == 2


def test_hidden_tests_outside_a_graded_cell_are_refused(repo, capsys):
    source = repo / "solutions/01_demo.py"
    source.write_text(source.read_text() + "\n\n# %%\n### BEGIN HIDDEN TESTS\nassert True\n### END HIDDEN TESTS\n")
    assert cli(repo, "sync") == 1
    assert "ClearHiddenTests" in capsys.readouterr().err


# ----------------------------------------------------------------------------- gradable chapters


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ('# %% nbgrader={"grade": true, "grade_id": "ex02_sub_points", "locked": true, "points": 1, '
         '"schema_version": 3, "solution": false, "task": false}\nprint("checked ex02_sub")\n'
         "### BEGIN HIDDEN TESTS\nassert sub(3, 1) == 2\n### END HIDDEN TESTS\n", '# %%\nprint("checked ex02_sub")\n',
         ["exercise 'ex02_sub' (cell 5) is not followed by a grade cell", "3 graded exercises"]),
        ('"grade_id": "ex03_mul_points", "locked": true, "points": 1', '"grade_id": "ex03_mul_points", "locked": true, "points": 0',
         ["exercise 'ex03_mul' (cell 7): its grade cell 'ex03_mul_points' carries no points"]),
        ("### BEGIN HIDDEN TESTS\nassert neg(3) == -3\n### END HIDDEN TESTS\n", "",
         ["exercise 'ex04_neg' (cell 9): its grade cell 'ex04_neg_points' has no hidden test that can fail"]),
        ("use_if_correct", "pick", ["no use_if_correct(...)"]),
        ('reveal_prediction("2 + 3", predicted_sum, total)', "print(total)",
         ["prediction 'predict01_sum' (cell 11) defines no function that a later reveal_prediction"]),
    ],
    ids=["no-grade-cell", "no-points", "no-hidden-test", "nothing-used", "never-revealed"],
)
def test_check_refuses_a_chapter_that_cannot_be_graded(repo, old, new, expected, capsys):
    path = repo / "solutions/01_demo.py"
    assert cli(repo, "sync") == 0
    commit_all(repo)
    assert cli(repo, "check") == 0 and capsys.readouterr().err == ""
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new))
    assert cli(repo, "sync") == 0  # sync only warns, so a chapter can be written step by step
    warnings = capsys.readouterr().err
    commit_all(repo)
    assert cli(repo, "check") == 1
    err = capsys.readouterr().err
    for message in expected:
        assert f"solutions/01_demo.py: {message}" in err and message in warnings
    assert "out of sync" not in err


@pytest.mark.parametrize("chapter", sorted((REPO / "solutions").glob("*.py")), ids=lambda p: p.stem)
def test_every_chapter_is_gradable(chapter):
    """At least four exercises, each followed by a grade cell with points and a hidden test that can
    fail; one exercise feeds the chapter's model (use_if_correct); every prediction is revealed."""
    config = notebooks.load_config(REPO)
    nb, rel = notebooks.read_solution(chapter, REPO, config)
    problems = notebooks.grading_problems(nb, rel)
    assert problems == [], "\n".join(problems)
