"""Build the course notebooks from their only hand-edited source, ``solutions/*.py``.

    solutions/NN_name.py     jupytext py:percent, exercises marked for nbgrader   (edited by hand)
    solutions/NN_name.ipynb  its pair, keeping the outputs of the last full run     (generated)
    chapters/NN_name.py      the worksheet: solutions cleared, hidden tests removed  (generated)
    chapters/NN_name.ipynb   its pair, without outputs                              (generated)

Commands, run from the repository root:

    python tools/notebooks.py sync                  regenerate everything from solutions/*.py
    python tools/notebooks.py check                 sync, then fail if git shows any change or a chapter
                                                    is not gradable (see grading_problems) (CI)
    python tools/notebooks.py execute FILE.ipynb..  refresh a solution notebook's outputs (full mode)

Pairs are always rebuilt .py -> .ipynb, never by timestamp: after a clone every file has the
same mtime, and jupytext's `--sync` could then overwrite a .py edit with a stale .ipynb.
"""

import argparse
import copy
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from jupytext.combine import combine_inputs_with_outputs
from jupytext.config import load_jupytext_configuration_file
from nbgrader.nbgraderformat import MetadataValidator, ValidationError
from nbgrader.preprocessors import ClearHiddenTests, ClearSolutions

ROOT = Path(__file__).resolve().parents[1]
FMT = "py:percent"
CELL_TIMEOUT_S = 1800  # full-mode training cells can take many minutes on a laptop CPU
VOLATILE_CELL_METADATA = ("execution", "ExecuteTime")  # timestamps from nbclient / JupyterLab


class PipelineError(Exception):
    """A problem in a source file that the author must fix; printed without a traceback."""


def load_config(root):
    path = root / "jupytext.toml"
    if not path.is_file():
        raise PipelineError(f"{path} is missing; it fixes the formats and metadata filters of the pairs.")
    return load_jupytext_configuration_file(str(path))


def cell_name(cell, index):
    """How an error message points at a cell: its grade_id, else its first line."""
    grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
    first_line = cell.source.strip().split("\n")[0][:60]
    return f"cell {index}" + (f" (grade_id {grade_id!r})" if grade_id else f" ({first_line!r})")


def make_worksheet(nb, rel):
    """Return a copy of ``nb`` as a student receives it: every solution region replaced by
    nbgrader's stub and every hidden-test region of a graded cell removed (what nbgrader's
    ``generate_assignment`` does to a source notebook)."""
    clear, hide = ClearSolutions(enforce_metadata=True), ClearHiddenTests(enforce_metadata=True)
    # nbgrader matches its delimiters as plain substrings of any line, prose included, and
    # silently deletes a line holding an END with no BEGIN before it: refuse both here.
    for begin, end in ((clear.begin_solution_delimeter, clear.end_solution_delimeter),
                       (hide.begin_test_delimeter, hide.end_test_delimeter)):
        for i, cell in enumerate(nb.cells):
            lines = cell.source.split("\n")
            n_begin, n_end = sum(begin in ln for ln in lines), sum(end in ln for ln in lines)
            if cell.cell_type != "code" and n_begin + n_end:
                raise PipelineError(
                    f"{rel}: {cell.cell_type} {cell_name(cell, i)} contains {begin!r} or {end!r}; "
                    "nbgrader treats these as markers even in prose. Reword it."
                )
            if n_end > n_begin:
                raise PipelineError(f"{rel}: {cell_name(cell, i)} has an {end!r} line without its {begin!r}.")
    try:
        MetadataValidator().validate_nb(nb)  # missing or duplicate grade_id, bad schema
    except ValidationError as err:
        raise PipelineError(f"{rel}: invalid nbgrader metadata: {err}") from None

    worksheet = copy.deepcopy(nb)
    resources = {"language": worksheet.metadata.get("kernelspec", {}).get("language", "python")}
    for i, cell in enumerate(worksheet.cells):  # cell by cell, so that an error can name its cell
        for step in (clear, hide):
            try:
                step.preprocess_cell(cell, resources, i)
            except RuntimeError as err:
                raise PipelineError(f"{rel}: {cell_name(cell, i)}: {err} (nbgrader {type(step).__name__})") from None
    return worksheet


MIN_GRADED_EXERCISES = 4  # per chapter (the course's convention, docs/instructors.md)
MIN_SUBSTANTIAL = 2  # graded exercises per chapter whose solution is a piece of model or training ...
SUBSTANTIAL_LINES = 12  # ... of at least this many lines of the student's own code
MIN_DERIVATIONS = 1  # manually graded derivations per chapter


def nbgrader_meta(cell):
    return cell.metadata.get("nbgrader", {})


def solution_lines(source):
    """Lines of code a student writes in the solution regions of a cell (no blank or comment lines)."""
    clear = ClearSolutions()
    inside, count = False, 0
    for line in source.split("\n"):
        if clear.begin_solution_delimeter in line:
            inside = True
        elif clear.end_solution_delimeter in line:
            inside = False
        elif inside and line.strip() and not line.strip().startswith("#"):
            count += 1
    return count


def derivations(nb):
    """The manually graded answers: markdown cells nbgrader grades by hand (solution and grade, with
    points), as ``[{"grade_id", "points", "cell", "source"}]``; their grade_ids start with "derive"."""
    return [{"grade_id": nbgrader_meta(c)["grade_id"], "points": nbgrader_meta(c).get("points", 0), "cell": i,
             "source": c.source}
            for i, c in enumerate(nb.cells)
            if c.cell_type == "markdown" and nbgrader_meta(c).get("solution") and nbgrader_meta(c).get("grade")]


def graded_exercises(nb):
    """The chapter's exercises and what grades them, read from the nbgrader metadata.

    Returns (exercises, predictions): ``exercises`` lists, for every solution cell whose grade_id
    does not start with "predict", a dict with its ``grade_id``, ``cell`` index and the first
    nbgrader cell after it (``graded_by``: the grade cell's dict of ``grade_id``, ``points``,
    ``cell``, ``hidden``, or None when the next nbgrader cell is not a grade cell); ``predictions``
    lists the grade_ids of the "predict, then run" cells.
    """
    marked = [(i, cell) for i, cell in enumerate(nb.cells) if nbgrader_meta(cell)]
    hide = ClearHiddenTests()
    exercises, predictions = [], []
    for k, (i, cell) in enumerate(marked):
        meta = nbgrader_meta(cell)
        if not meta.get("solution") or meta.get("grade"):
            continue
        if meta["grade_id"].startswith("predict"):
            predictions.append(meta["grade_id"])
            continue
        graded_by = None
        if k + 1 < len(marked):
            j, nxt = marked[k + 1]
            nxt_meta = nbgrader_meta(nxt)
            if nxt_meta.get("grade") and not nxt_meta.get("solution"):
                lines = nxt.source.split("\n")
                start = [n for n, ln in enumerate(lines) if hide.begin_test_delimeter in ln]
                end = [n for n, ln in enumerate(lines) if hide.end_test_delimeter in ln]
                hidden = "\n".join(lines[start[0] + 1:end[0]]) if start and end else ""
                graded_by = {"grade_id": nxt_meta["grade_id"], "points": nxt_meta.get("points", 0), "cell": j,
                             "hidden": hidden}
        exercises.append({"grade_id": meta["grade_id"], "cell": i, "graded_by": graded_by,
                          "lines": solution_lines(cell.source)})
    return exercises, predictions


def grading_problems(nb, rel):
    """What keeps ``nb`` (a solution notebook) from being a gradable chapter, one sentence each.

    Every exercise must be followed (before any other exercise) by a grade cell with points > 0
    whose hidden tests can fail (they hold an ``assert``); a chapter needs at least
    MIN_GRADED_EXERCISES graded exercises, MIN_SUBSTANTIAL of them of substance (at least
    SUBSTANTIAL_LINES lines of solution), MIN_DERIVATIONS manually graded derivations (with points
    and a rubric), and at least one ``use_if_correct`` (an exercise whose function the chapter goes
    on with); every "predict" cell's function is revealed by a ``reveal_prediction`` call after it.
    """
    exercises, _ = graded_exercises(nb)
    problems, graded, substantial = [], 0, 0
    for ex in exercises:
        g = ex["graded_by"]
        where = f"{rel}: exercise {ex['grade_id']!r} (cell {ex['cell']})"
        if g is None:
            problems.append(f"{where} is not followed by a grade cell; add one right after it "
                            f"(grade: true, points > 0, hidden tests), as in solutions/01_vae.py.")
        elif not g["points"] or g["points"] <= 0:
            problems.append(f"{where}: its grade cell {g['grade_id']!r} carries no points; give it points > 0.")
        elif "assert" not in g["hidden"]:
            problems.append(f"{where}: its grade cell {g['grade_id']!r} has no hidden test that can fail, so "
                            "nbgrader would give full marks for any answer; add assert_matches(...) between "
                            "the hidden-test markers.")
        else:
            graded += 1
            substantial += ex["lines"] >= SUBSTANTIAL_LINES
    if graded < MIN_GRADED_EXERCISES:
        problems.append(f"{rel}: {graded} graded exercise{'s' * (graded != 1)}; every chapter needs at least "
                        f"{MIN_GRADED_EXERCISES}.")
    if substantial < MIN_SUBSTANTIAL:
        problems.append(f"{rel}: {substantial} graded exercise{'s' * (substantial != 1)} of substance (a solution of "
                        f"{SUBSTANTIAL_LINES} lines or more); every chapter needs at least {MIN_SUBSTANTIAL}, where "
                        "the student writes a piece of the model or of training that the chapter then runs.")
    derived = derivations(nb)
    for d in derived:
        where = f"{rel}: derivation {d['grade_id']!r} (cell {d['cell']})"
        if not d["grade_id"].startswith("derive"):
            problems.append(f"{where}: a manually graded answer's grade_id must start with 'derive'.")
        if not d["points"] or d["points"] <= 0:
            problems.append(f"{where} carries no points; give it points > 0.")
        if "**Rubric" not in d["source"]:
            problems.append(f"{where} has no '**Rubric**' paragraph after its model answer for the grader.")
    if len(derived) < MIN_DERIVATIONS:
        problems.append(f"{rel}: {len(derived)} graded derivations; every chapter needs at least {MIN_DERIVATIONS} "
                        "(a markdown cell with nbgrader solution and grade set, a model answer and a rubric).")
    code = [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    if not any("use_if_correct(" in source for _, source in code):
        problems.append(f"{rel}: no use_if_correct(...): at least one exercise's function must be the one the "
                        "chapter then trains or evaluates its model with.")
    for i, cell in enumerate(nb.cells):
        grade_id = nbgrader_meta(cell).get("grade_id", "")
        if not grade_id.startswith("predict") or not nbgrader_meta(cell).get("solution"):
            continue
        names = re.findall(r"^def (\w+)\(", cell.source, flags=re.M)
        revealed = any("reveal_prediction(" in source and any(re.search(rf"\b{n}\b", source) for n in names)
                       for j, source in code if j > i)
        if not names or not revealed:
            problems.append(f"{rel}: prediction {grade_id!r} (cell {i}) defines no function that a later "
                            "reveal_prediction(...) call shows beside the measurement.")
    return problems


def assign_ids(nb, old):
    """Give ``nb`` the cell ids of ``old`` for matching cells, and index-derived ids otherwise.

    jupytext gives every cell it reads a random id; deterministic ones make regeneration
    byte-stable, and reusing the old ids keeps diffs small and JupyterLab state attached.
    """
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"
    if old is None:
        return nb
    merged = combine_inputs_with_outputs(copy.deepcopy(nb), old, fmt=FMT)
    for cell, merged_cell in zip(nb.cells, merged.cells):
        cell.id = merged_cell.get("id", cell.id)
    taken = set()
    for cell in nb.cells:  # an inserted cell's "cell-3" can clash with an old id kept elsewhere
        base, n = cell.id, 1
        while cell.id in taken:
            cell.id, n = f"{base}-{n}", n + 1
        taken.add(cell.id)
    return nb


def strip_volatile(nb):
    for cell in nb.cells:
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
    return nb


def paired_ipynb(nb, ipynb_path, config, keep_outputs):
    """Text of the .ipynb paired with ``nb`` (just read from its .py)."""
    nb = copy.deepcopy(nb)
    old = nbformat.read(ipynb_path, as_version=4) if ipynb_path.exists() else None
    assign_ids(nb, old)
    if keep_outputs and old is not None:
        # Outputs, execution counts and kernel metadata (language_info...) come from the old
        # notebook for cells whose source did not change (jupytext's `--update` behaviour).
        ids = [cell.id for cell in nb.cells]
        nb = combine_inputs_with_outputs(nb, old, fmt=FMT)
        for cell, cell_id in zip(nb.cells, ids):
            cell.id = cell_id
        strip_volatile(nb)
    text = jupytext.writes(nb, fmt="ipynb", config=config)
    return text if text.endswith("\n") else text + "\n"  # as nbformat.write and the jupytext CLI


def write_if_changed(path, text, root, changed):
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    changed.append(path.relative_to(root).as_posix())
    print(f"wrote {changed[-1]}")


def read_solution(src, root, config):
    rel = src.relative_to(root).as_posix()
    return jupytext.reads(src.read_text(encoding="utf-8"), fmt=FMT, config=config), rel


def all_grading_problems(root):
    """grading_problems of every solutions/*.py."""
    config = load_config(root)
    problems = []
    for src in sorted((root / "solutions").glob("*.py")):
        problems += grading_problems(*read_solution(src, root, config))
    return problems


def sync(root, warn=True):
    """Regenerate worksheets and pairs from solutions/*.py. Return the paths that changed.
    With ``warn``, print what keeps a chapter from being gradable (``check`` fails on it)."""
    config = load_config(root)
    changed = []
    sources = sorted((root / "solutions").glob("*.py"))
    for ipynb in sorted((root / "solutions").glob("*.ipynb")):
        if not ipynb.with_suffix(".py").exists():  # never delete what may be someone's only copy
            raise PipelineError(
                f"solutions/{ipynb.name} has no solutions/{ipynb.stem}.py to be built from: create it "
                f"with `jupytext --to py:percent solutions/{ipynb.name}`, or delete the notebook."
            )
    problems = []
    for src in sources:
        solution, rel = read_solution(src, root, config)
        if "kernelspec" not in solution.metadata:  # without it nbval and Jupyter guess a kernel
            raise PipelineError(f"{rel} has no kernelspec header; copy the `# ---` block of another chapter.")
        worksheet = make_worksheet(solution, rel)
        problems += grading_problems(solution, rel)
        worksheet_text = jupytext.writes(worksheet, fmt=FMT, config=config)
        chapter = root / "chapters" / src.name
        write_if_changed(chapter, worksheet_text, root, changed)
        # The worksheet pair is built from the .py text just written, exactly as the
        # solution pair is built from its .py, so both pairs follow the same rules.
        worksheet = jupytext.reads(worksheet_text, fmt=FMT, config=config)
        for nb, py, keep in ((solution, src, True), (worksheet, chapter, False)):
            ipynb = py.with_suffix(".ipynb")
            write_if_changed(ipynb, paired_ipynb(nb, ipynb, config, keep), root, changed)

    stems = {src.stem for src in sources}
    for path in sorted((root / "chapters").glob("*")):
        if path.suffix in (".py", ".ipynb") and path.stem not in stems:
            path.unlink()
            changed.append(path.relative_to(root).as_posix())
            print(f"removed {changed[-1]} (no solutions/{path.stem}.py)")
    if warn:
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
    return changed


def git(root, *args):
    result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if result.returncode > 1:  # 1 is `git diff --exit-code` reporting a difference
        raise PipelineError(f"git {' '.join(args)} failed in {root}: {result.stderr.strip()}")
    return result.stdout


def check(root):
    """Sync, then demand a clean tree (the pairs and worksheets committed are those sync builds) and
    gradable chapters (see grading_problems)."""
    sync(root, warn=False)
    problems = all_grading_problems(root)
    paths = ("solutions", "chapters")
    # `diff` lists changed tracked files; `status` adds the new untracked ones that diff misses.
    dirty = set(git(root, "diff", "--exit-code", "--name-only", "--", *paths).split())
    status = git(root, "status", "--porcelain", "--untracked-files=all", "--", *paths)
    dirty |= {line[3:].strip('"') for line in status.splitlines()}
    if dirty:
        problems.append(f"Notebooks are out of sync with solutions/*.py: {', '.join(sorted(dirty))}. "
                        "Run `make sync` and commit the result.")
    if problems:
        raise PipelineError("\n".join(problems))
    print("Notebooks are in sync with solutions/*.py, and every chapter is gradable.")


def execute(root, files):
    """Rebuild each solution pair from its .py, run it top to bottom in full mode, save outputs."""
    from nbclient import NotebookClient  # imported here: only `execute` needs a kernel
    from nbclient.exceptions import CellExecutionError

    config = load_config(root)
    os.environ.pop("HVAE_SMOKE", None)  # the kernel inherits our environment: run in full mode
    for name in files:
        py = (root / name).resolve().with_suffix(".py")
        if py.parent != (root / "solutions").resolve() or not py.exists():
            raise PipelineError(f"{name}: `execute` takes solution notebooks, solutions/NN_name.ipynb.")
        ipynb = py.with_suffix(".ipynb")
        source = jupytext.reads(py.read_text(encoding="utf-8"), fmt=FMT, config=config)
        nb = nbformat.reads(paired_ipynb(source, ipynb, config, keep_outputs=True), as_version=4)
        start = time.perf_counter()
        client = NotebookClient(
            nb,
            timeout=CELL_TIMEOUT_S,
            resources={"metadata": {"path": str(py.parent)}},  # run where the notebook lives
            record_timing=False,
            store_widget_state=False,  # widget state is random model ids: noise in every diff
            coalesce_streams=True,  # one print can arrive in several messages on a loaded machine
        )
        rel = ipynb.relative_to(root).as_posix()
        try:
            client.execute()
        except CellExecutionError as err:
            raise PipelineError(f"{rel} failed; its outputs were not saved.\n{err}") from None
        nbformat.write(strip_volatile(nb), ipynb)
        print(f"executed {rel} in {time.perf_counter() - start:.1f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("sync", help="regenerate chapters/ and all .ipynb pairs from solutions/*.py")
    commands.add_parser("check", help="sync, then fail if git shows changes in solutions/ or chapters/")
    run = commands.add_parser("execute", help="re-run solution notebooks in full mode, keeping outputs")
    run.add_argument("files", nargs="+", help="solutions/NN_name.ipynb (or .py), relative to the root")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        if args.command == "sync":
            changed = sync(root)
            if not changed:
                print("Nothing to do: notebooks already match solutions/*.py.")
        elif args.command == "check":
            check(root)
        else:
            execute(root, args.files)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
