"""The course as nbgrader assignments: `make assignments` (tools/assignments.py) and nbgrader itself,
end to end on Chapter 1 in smoke mode, graded through nbgrader's gradebook API."""
import copy
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


assignments = load_tool("assignments")
notebooks = load_tool("notebooks")


def test_points_table_in_the_instructors_guide_is_current():
    guide = REPO / "docs" / "instructors.md"
    text = guide.read_text(encoding="utf-8")
    table = assignments.points_table(REPO)
    assert f"{assignments.TABLE_BEGIN}\n{table}{assignments.TABLE_END}" in text, (
        "docs/instructors.md's points table is stale: run `python tools/assignments.py points --update "
        "docs/instructors.md` and commit it")
    for name, _, _ in assignments.chapters(REPO):  # every chapter is an assignment of the table
        assert f"| `{name}` |" in table
    assert f"{assignments.RUBRICS_BEGIN}\n{assignments.rubrics(REPO)}{assignments.RUBRICS_END}" in text, (
        "docs/instructors.md's rubrics are stale: run `python tools/assignments.py points --update docs/instructors.md`")
    for line in assignments.rubrics(REPO).splitlines():
        if line.startswith("- **"):  # a rubric's points stated once, from its grade cell, not again from its text
            assert "points): (" not in line, line


def test_points_count_only_exercises_whose_grade_cell_can_fail():
    nb = nbformat.v4.new_notebook()

    def cell(source, **meta):
        c = nbformat.v4.new_code_cell(source)
        if meta:
            c.metadata["nbgrader"] = {"schema_version": 3, "locked": False, "solution": False, "grade": False,
                                      "task": False, **meta}
        return c

    nb.cells = [
        cell("def a(): pass", grade_id="ex01_a", solution=True),
        cell("ok = 1\n### BEGIN HIDDEN TESTS\nassert ok\n### END HIDDEN TESTS", grade_id="ex01_a_test", grade=True,
             points=3),
        cell("def b(): pass", grade_id="ex02_b", solution=True),
        cell("print('helper')"),  # plain cells may sit between an exercise and its grade cell
        cell("ok = 1", grade_id="ex02_b_test", grade=True, points=2),  # no hidden test: cannot fail
        cell("def p(): return 1", grade_id="predict01_p", solution=True),
    ]
    assert assignments.points(nb) == (1, 3, 1)


def test_build_writes_a_course_and_keeps_what_is_there(tmp_path, capsys):
    course = tmp_path / "course"
    names = assignments.build(REPO, course)
    stems = sorted(p.stem for p in (REPO / "solutions").glob("*.py"))
    assert names == stems  # one assignment per chapter, discovered from solutions/*.py
    for name in names:
        nb = nbformat.read(course / "source" / name / f"{name}.ipynb", as_version=4)
        solution = nbformat.read(REPO / "solutions" / f"{name}.ipynb", as_version=4)
        assert [c.source for c in nb.cells] == [c.source for c in solution.cells]
    config = course / "nbgrader_config.py"
    assert "c.Execute.timeout = 1800" in config.read_text()

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", course_id=assignments.COURSE_ID) as gradebook:
        assert sorted(a.name for a in gradebook.assignments) == stems
        gradebook.add_student("ada")  # state an instructor has: it must survive a rebuild
    config.write_text(config.read_text() + "c.Execute.timeout = 60\n")
    capsys.readouterr()
    assert assignments.build(REPO, course) == stems
    assert "kept nbgrader_config.py" in capsys.readouterr().out
    assert config.read_text().endswith("c.Execute.timeout = 60\n")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", course_id=assignments.COURSE_ID) as gradebook:
        assert [s.id for s in gradebook.students] == ["ada"]
        assert sorted(a.name for a in gradebook.assignments) == stems


def make(*args, venv=".venv"):
    return subprocess.run(["make", "--no-print-directory", "-n", "assignments", f"VENV={venv}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_assignments_never_reinstalls_an_existing_venv(tmp_path):
    """`make -n` only prints what make would run. With .venv present: the tool and nothing else,
    even when pyproject.toml is newer than the install stamp; without it: the setup first."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    dry = make(venv=str(venv))
    assert dry.returncode == 0, dry.stderr
    assert "tools/assignments.py build" in dry.stdout and "pip" not in dry.stdout
    fresh = make(venv=str(tmp_path / "missing"))
    assert fresh.returncode == 0, fresh.stderr
    assert "pip install" in fresh.stdout and "tools/assignments.py build" in fresh.stdout


# ----------------------------------------------------------------------------- nbgrader, end to end

STUDENTS = ("complete", "untouched", "one_wrong")
BROKEN = "ex03_train_vae"  # the exercise whose loop trains the chapter's VAE
BROKEN_BODY = """\
    history = []
    for step in range(optim.max_steps):  # no schedule, no clipping: a plausible first attempt
        optimizer.zero_grad()
        out = model(batches(step))
        loss = -out.log_px_z.mean() + out.kl_per_group.sum(1).mean()
        loss.backward()
        optimizer.step()
        history.append({"loss": loss.item(), "bpd": 0.0, "grad_norm": 0.0, "lr": optim.lr, "beta": 1.0})
    return history
"""


def nbgrader(course, *args):
    env = dict(os.environ, HVAE_SMOKE="1", OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # nbgrader runs `alembic`
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))  # this hvae_lib
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def break_exercise(nb, grade_id, wrong_body=BROKEN_BODY):
    """Replace the body of one exercise by a wrong one (a training loop without its schedule)."""
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    body = re.search(r"### BEGIN SOLUTION\n(.*?)    ### END SOLUTION", cell.source, flags=re.S)
    cell.source = cell.source.replace(body.group(1), wrong_body)
    return nb


@pytest.mark.slow
def test_nbgrader_grades_chapter_1_end_to_end(tmp_path):
    course = tmp_path / "course"
    assignments.build(REPO, course)
    nbgrader(course, "generate_assignment", "01_vae", "--force")
    release = nbformat.read(course / "release/01_vae/01_vae.ipynb", as_version=4)
    source = nbformat.read(course / "source/01_vae/01_vae.ipynb", as_version=4)
    released = "\n".join(c.source for c in release.cells)
    assert "HIDDEN TESTS" not in released and "assert_matches(" not in released and "SOLUTION" not in released
    assert released.count("raise NotImplementedError()") == sum(
        bool(c.metadata.get("nbgrader", {}).get("solution")) for c in source.cells if c.cell_type == "code")
    answers = [c.source for c in release.cells if c.cell_type == "markdown" and c.metadata.get("nbgrader", {}).get("solution")]
    assert answers and all(a.strip() == "YOUR ANSWER HERE" for a in answers)  # the derivations, without their model answers
    assert all(not c.get("outputs") for c in release.cells if c.cell_type == "code")

    submissions = {"complete": source, "untouched": release, "one_wrong": break_exercise(copy.deepcopy(source), BROKEN)}
    for student, nb in submissions.items():
        path = course / "submitted" / student / "01_vae" / "01_vae.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(nb, path)
    nbgrader(course, "autograde", "01_vae")

    _, _, chapter = next(c for c in assignments.chapters(REPO) if c[0] == "01_vae")
    exercises, _ = notebooks.graded_exercises(chapter)
    cells = {e["grade_id"]: e["graded_by"] for e in exercises}
    total = sum(g["points"] for g in cells.values())
    derivations = {d["grade_id"]: d["points"] for d in notebooks.derivations(chapter)}
    assert len(cells) >= 4 and total > 0 and derivations and BROKEN in cells

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", course_id=assignments.COURSE_ID) as gradebook:
        scores = {s: gradebook.find_submission("01_vae", s).score for s in STUDENTS}
        wrong = {e: gradebook.find_grade(g["grade_id"], "01_vae", "01_vae", "one_wrong").score
                 for e, g in cells.items()}
        assert gradebook.find_submission("01_vae", "complete").max_score == total + sum(derivations.values())
        # The derivations wait for the instructor where a student answered, and score 0 where the
        # answer cell was left as released; nbgrader graded everything else.
        derived = {(d, s): gradebook.find_grade(d, "01_vae", "01_vae", s) for d in derivations for s in STUDENTS}
        assert all(g.needs_manual_grade and g.auto_score is None for (d, s), g in derived.items() if s != "untouched")
        assert all(not g.needs_manual_grade and g.score == 0 for (d, s), g in derived.items() if s == "untouched")
        for d, points in derivations.items():  # the instructor grades the complete answer in full
            derived[d, "complete"].manual_score = points
        gradebook.db.commit()
        graded_total = gradebook.find_submission("01_vae", "complete").score
    assert scores == {"complete": total, "untouched": 0, "one_wrong": total - cells[BROKEN]["points"]}
    assert wrong == {e: (0 if e == BROKEN else g["points"]) for e, g in cells.items()}
    assert graded_total == total + sum(derivations.values())

    # The wrong loop failed its visible check, so the chapter trained with the library's and ran on.
    graded = nbformat.read(course / "autograded/one_wrong/01_vae/01_vae.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in graded.cells if c.cell_type == "code" for o in c.outputs)
    assert "train_vae: your exercise is not finished, so the chapter goes on with hvae_lib's version" in printed
    assert "iw_bound: using your implementation from here on." in printed
    errors = [o.ename for c in graded.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == ["AssertionError"]  # only the broken exercise's hidden test


# ----------------------------------------------------------------------------- the lazy student

GUARD_MESSAGE = "which is the answer this check compares with"
CHAPTERS = sorted(p.stem for p in (REPO / "solutions").glob("*.py"))


def checked_functions(grade_cell_source):
    """(exercise name, name of the student's function) of every check(...) in a grade cell."""
    import ast

    found = []
    for node in ast.walk(ast.parse(grade_cell_source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "check" and len(node.args) >= 2:
            name, fn = node.args[0], node.args[1]
            assert isinstance(name, ast.Constant) and isinstance(fn, ast.Name), (
                f"check(...) must name the exercise with a string and pass the student's function by name: "
                f"{ast.unparse(node)[:120]}")
            found.append((name.value, fn.id))
    return found


def lazy_submission(release):
    """The released worksheet answered by a student who looks every answer up: right after each
    exercise, its function is rebound to call what the exercise's check compares with; each
    derivation gets a one-line answer (left blank, nbgrader would score it 0 without a person)."""
    nb = copy.deepcopy(release)
    inserts = []
    last_exercise = None
    for i, cell in enumerate(nb.cells):
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "markdown" and meta.get("solution") and meta.get("grade"):
            cell.source = "The formula is in hvae_lib."  # an answer, so the derivation waits for a person
        if cell.cell_type == "code" and meta.get("solution") and not meta.get("grade_id", "").startswith("predict"):
            last_exercise = i
        if cell.cell_type == "code" and meta.get("grade") and not meta.get("solution"):
            for name, fn in checked_functions(cell.source):
                lazy = (f"{fn} = lambda *args, **kwargs: __import__('hvae_lib.exercises', fromlist=['reference_of'])"
                        f".reference_of({name!r})(*args, **kwargs)  # looked up, not written")
                inserts.append((last_exercise, lazy))
    assert inserts, "no check(...) found in the chapter's grade cells"
    for index, source in sorted(inserts, key=lambda x: x[0], reverse=True):
        nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    return nb


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lazy") / "course"
    assignments.build(REPO, folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_a_student_who_calls_the_reference_scores_nothing(course, chapter):
    """Through nbgrader's own generate_assignment and autograde (smoke mode): every autograded exercise
    answered by calling its check's reference scores 0, each because the guard caught it, and the
    derivations wait for a person."""
    nbgrader(course, "generate_assignment", chapter, "--force")
    release = nbformat.read(course / "release" / chapter / f"{chapter}.ipynb", as_version=4)
    path = course / "submitted" / "lazy" / chapter / f"{chapter}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(lazy_submission(release), path)
    nbgrader(course, "autograde", chapter, "--student", "lazy", "--force")

    _, _, solution = next(c for c in assignments.chapters(REPO) if c[0] == chapter)
    exercises, _ = notebooks.graded_exercises(solution)
    grade_cells = [e["graded_by"]["grade_id"] for e in exercises if e["graded_by"]]
    derivations = [d["grade_id"] for d in notebooks.derivations(solution)]
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", course_id=assignments.COURSE_ID) as gradebook:
        scores = {g: gradebook.find_grade(g, chapter, chapter, "lazy").score for g in grade_cells}
        waiting = {d: gradebook.find_grade(d, chapter, chapter, "lazy").needs_manual_grade for d in derivations}
        total = gradebook.find_submission(chapter, "lazy").score
    assert scores == {g: 0 for g in grade_cells} and total == 0
    assert all(waiting.values()), waiting
    graded = nbformat.read(course / "autograded" / "lazy" / chapter / f"{chapter}.ipynb", as_version=4)
    caught = [c.metadata["nbgrader"]["grade_id"] for c in graded.cells
              if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"
              and GUARD_MESSAGE in "".join(o.get("text", "") + str(o.get("evalue", "")) for o in c.outputs)]
    assert sorted(caught) == sorted(grade_cells), "every grade cell must fail because the guard caught the lookup"
