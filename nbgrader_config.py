# nbgrader's settings when JupyterLab runs from the repository root (`make lab`): the course folder
# is course/, which `make assignments` builds, so the Nbgrader menu's Formgrader lists the chapters.
# course/nbgrader_config.py (written by `make assignments`: course id, cell timeout) is read too, and
# is what nbgrader reads when run from inside course/ (docs/instructors.md).
import os

c = get_config()  # noqa: F821 (nbgrader provides it)
c.CourseDirectory.root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "course")
load_subconfig("course/nbgrader_config.py")  # noqa: F821 (a missing file is skipped)
