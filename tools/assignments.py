"""The course as nbgrader assignments: one per chapter, built from ``solutions/*.py``.

Commands, run from the repository root (``make assignments`` runs the first):

    python tools/assignments.py build [--out course]   the nbgrader course folder
    python tools/assignments.py points                  graded exercises and points per chapter
    python tools/assignments.py points --update docs/instructors.md
                                                        rewrite that table, and the derivations' rubrics,
                                                        in the instructors' guide

``build`` writes, under the course folder:

    nbgrader_config.py                 course id; cell timeout for training cells (kept if you edited it)
    gradebook.db                       the gradebook, with one assignment per chapter
    source/NN_name/NN_name.ipynb       the solution notebook, ready for `nbgrader generate_assignment NN_name`

Every chapter in ``solutions/`` becomes an assignment named after its file (``01_vae``), so a new
chapter joins at the next build. Building again refreshes the source notebooks and adds new
assignments; it never deletes anything nbgrader wrote (releases, submissions, grades).
See docs/instructors.md for releasing, collecting and autograding.
"""

import argparse
import os
import re
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import notebooks  # noqa: E402  (tools/notebooks.py: the same reading and pairing rules as `make sync`)

ROOT = Path(__file__).resolve().parents[1]
COURSE_ID = "hvae-course"
TABLE_BEGIN, TABLE_END = "<!-- points table: begin -->", "<!-- points table: end -->"
RUBRICS_BEGIN, RUBRICS_END = "<!-- rubrics: begin -->", "<!-- rubrics: end -->"

CONFIG = '''\
# nbgrader settings of the hierarchical-VAE course, written by `make assignments`
# (tools/assignments.py); edit freely: a later build keeps an edited file. Run every nbgrader
# command from this folder. The instructors' guide is docs/instructors.md in the repository.
c = get_config()  # noqa: F821 (nbgrader provides it)
c.CourseDirectory.course_id = "{course_id}"
# The chapters train models: in full mode one cell runs for minutes on a laptop CPU, far past
# nbgrader's default of 30 s per cell. To grade in about a minute per submission, autograde in
# smoke mode instead: HVAE_SMOKE=1 nbgrader autograde 01_vae (the grade cells do not depend on it).
c.Execute.timeout = 1800
'''


def chapters(root=ROOT):
    """[(assignment name, chapter title, solution notebook)] for every solutions/NN_name.py, in order."""
    config = notebooks.load_config(root)
    found = []
    for src in sorted((root / "solutions").glob("*.py")):
        nb, _ = notebooks.read_solution(src, root, config)
        title = next((m.group(1) for c in nb.cells if c.cell_type == "markdown"
                      for m in [re.match(r"#\s+(.+)", c.source.strip())] if m), src.stem)
        found.append((src.stem, title, nb))
    return found


def points(nb):
    """(graded exercises, autograded points, predictions) of a solution notebook: exercises count when
    their grade cell passes the pipeline's rules (notebooks.grading_problems)."""
    exercises, predictions = notebooks.graded_exercises(nb)
    graded = [e["graded_by"] for e in exercises
              if e["graded_by"] and e["graded_by"]["points"] > 0 and "assert" in e["graded_by"]["hidden"]]
    return len(graded), sum(g["points"] for g in graded), len(predictions)


def substantial(nb):
    """How many graded exercises are of substance (notebooks.SUBSTANTIAL_LINES lines of solution or more)."""
    exercises, _ = notebooks.graded_exercises(nb)
    return sum(1 for e in exercises if e["graded_by"] and e["lines"] >= notebooks.SUBSTANTIAL_LINES)


def points_table(root=ROOT):
    """The markdown table of exercises and points per assignment (docs/instructors.md)."""
    rows = ["| assignment | chapter | graded exercises (of substance) | autograded points | derivations | "
            "manually graded points | predict-then-run questions |", "|---|---|---|---|---|---|---|"]
    auto_total = manual_total = 0
    for name, title, nb in chapters(root):
        n, pts, preds = points(nb)
        derived = notebooks.derivations(nb)
        manual = sum(d["points"] for d in derived)
        auto_total, manual_total = auto_total + pts, manual_total + manual
        rows.append(f"| `{name}` | {title} | {n} ({substantial(nb)}) | {pts} | {len(derived)} | {manual} | {preds} |")
    rows.append(f"| | **all chapters** | | **{auto_total}** | | **{manual_total}** | |")
    return "\n".join(rows) + "\n"


def rubrics(root=ROOT):
    """Every graded derivation with its points and the rubric its solution cell gives (docs/instructors.md)."""
    parts = []
    for name, title, nb in chapters(root):
        for d in notebooks.derivations(nb):
            rubric = d["source"].split("**Rubric", 1)[1] if "**Rubric" in d["source"] else "** (none yet)"
            rubric = rubric.split("**", 1)[1].strip(" :.\n")
            rubric = re.sub(r"^\(\d+ points?\)\s*:?\s*", "", rubric)  # the points are given once, from the grade cell
            parts.append(f"- **{title}**, `{d['grade_id']}` ({d['points']} points): {rubric}")
    return "\n".join(parts) + "\n" if parts else "(no graded derivations yet)\n"


def update_doc(path, table, begin=TABLE_BEGIN, end=TABLE_END):
    """Replace the text between the ``begin`` and ``end`` markers of ``path``; True when it changed."""
    text = path.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        raise notebooks.PipelineError(f"{path} has no '{begin}' ... '{end}' block to update.")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{begin}\n{table}{end}{tail}"
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def build(root, out, course_id=COURSE_ID):
    """Write (or refresh) the nbgrader course folder ``out``; return the assignment names."""
    from nbgrader.api import Gradebook  # imported here: `points` needs no database

    # nbgrader runs `alembic` by name to set up its database: find it beside this Python even when
    # the environment is not activated (as under make).
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

    config = notebooks.load_config(root)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for name, _, nb in chapters(root):
        ipynb = root / "solutions" / f"{name}.ipynb"
        notebooks.make_worksheet(nb, f"solutions/{name}.py")  # nbgrader's own checks: ids, markers
        # The source notebook is the .py as `make sync` pairs it, with the last full run's outputs
        # (nbgrader clears them in the released version).
        text = notebooks.paired_ipynb(nb, ipynb, config, keep_outputs=True)
        nbformat.validate(nbformat.reads(text, as_version=4))
        target = out / "source" / name / f"{name}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        names.append(name)
        print(f"wrote {target.relative_to(out)}")

    config_path, config_text = out / "nbgrader_config.py", CONFIG.format(course_id=course_id)
    if not config_path.exists():
        config_path.write_text(config_text, encoding="utf-8")
        print("wrote nbgrader_config.py")
    elif config_path.read_text(encoding="utf-8") != config_text:
        print("kept nbgrader_config.py, which differs from the generated one (delete it to regenerate)")

    with Gradebook(f"sqlite:///{(out / 'gradebook.db').resolve()}", course_id=course_id) as gradebook:
        known = {a.name for a in gradebook.assignments}
        for name in names:
            gradebook.update_or_create_assignment(name)
        added = [n for n in names if n not in known]
    print(f"gradebook.db: {len(names)} assignments" + (f" ({', '.join(added)} added)" if added else ""))
    for problem in notebooks.all_grading_problems(root):
        print(f"warning: {problem}", file=sys.stderr)
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="write the nbgrader course folder")
    make.add_argument("--out", type=Path, default=Path("course"), help="course folder (default: %(default)s)")
    make.add_argument("--course-id", default=COURSE_ID, help="nbgrader course id (default: %(default)s)")
    table = commands.add_parser("points", help="print graded exercises and points per chapter")
    table.add_argument("--update", type=Path, metavar="FILE.md", help="rewrite the table between the markers of FILE.md")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        if args.command == "build":
            out = args.out if args.out.is_absolute() else Path.cwd() / args.out
            names = build(root, out, args.course_id)
            print(f"{out}: {len(names)} assignments ready; next: cd {out} && nbgrader generate_assignment {names[0]}"
                  if names else f"{out}: no chapters found in {root / 'solutions'}")
        elif args.update:
            changed = update_doc(args.update, points_table(root))
            changed |= update_doc(args.update, rubrics(root), RUBRICS_BEGIN, RUBRICS_END)
            print(f"{'updated' if changed else 'unchanged'}: {args.update}")
        else:
            print(points_table(root), end="")
    except notebooks.PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
