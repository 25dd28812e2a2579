"""JupyterLab in a real browser (headless Debian Chromium driven by Playwright, tests/chromium.py).

The server is the one `make lab` starts (the command `make -n lab` prints, for this environment,
with the settings `make setup` installed: a chapter's .py opens as a notebook), on a free port with
a token the test knows, in a scratch copy of what it serves from the repository root: `jupytext.toml`,
`nbgrader_config.py`, `chapters/01_vae.py` and the nbgrader course folder that `make assignments`
builds. (Running cells in the repository itself would write outputs into a committed worksheet.)

A student opens chapters/01_vae.py, which JupyterLab shows as a notebook, runs its first code
cells in smoke mode and the test reads their output on the page. An instructor finds nbgrader's
panels in this JupyterLab version (the Nbgrader menu, the Assignments and Courses panels, the
Create Assignment sidebar, the Validate button) and the formgrader lists every chapter.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

import pytest

import chromium

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "_site" / "screenshots"  # what the browser showed, kept for a person to look at (not committed)
CHAPTER = "chapters/01_vae.py"
# The first code cells of Chapter 1 and what each prints (in smoke mode).
FIRST_CELLS = [["smoke mode: True"], ["encoder error 0.00: log p(x) =", "encoder error 0.25:", "gap ="]]

pytestmark = [pytest.mark.browser, pytest.mark.slow]

sys.path.insert(0, str(REPO / "tools"))
import assignments  # noqa: E402

CHAPTERS = sorted(p.stem for p in (REPO / "solutions").glob("*.py"))


def broken_extension_message(what: str) -> str:
    return (f"{what}: nbgrader {version('nbgrader')}'s JupyterLab extension does not work in JupyterLab "
            f"{version('jupyterlab')}. nbgrader's labextension has broken with newer JupyterLab releases before; "
            "pyproject.toml pins the versions this test passed with: move jupyterlab and nbgrader together, "
            "to releases that pass it.")


def make_lab_command() -> list[str]:
    """The command `make lab` runs, for this environment (`make -n` prints it without running it)."""
    dry = subprocess.run(["make", "--no-print-directory", "-n", "lab", f"VENV={sys.prefix}"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    line = next((line for line in dry.stdout.splitlines() if line.startswith(f"{sys.prefix}/bin/jupyter lab")), None)
    assert dry.returncode == 0 and line, f"`make -n lab` shows no jupyter lab command:\n{dry.stdout}{dry.stderr}"
    return shlex.split(line)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The `make lab` server in a scratch copy of the repository root; yields (base URL, token, folder)."""
    chromium.require_browser()
    root = tmp_path_factory.mktemp("lab-root")
    state = tmp_path_factory.mktemp("lab-state")  # JupyterLab's own settings, workspaces and runtime files
    for name in ("jupytext.toml", "nbgrader_config.py", CHAPTER):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    assignments.build(REPO, root / "course")  # what `make assignments` runs
    config = state / "config" / "nbgrader_config.py"  # an exchange of the test's own, not /usr/local/share
    config.parent.mkdir(parents=True)
    config.write_text(f"c = get_config()\nc.Exchange.root = {str(state / 'exchange')!r}\n")
    (state / "exchange").mkdir(mode=0o777)
    (state / "exchange").chmod(0o777)  # nbgrader's rule for an exchange folder (umask aside)
    news = state / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # no pop-up, no request out

    port, token = chromium.free_port(), secrets.token_hex(16)
    command = make_lab_command() + ["--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                                    "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}"]
    env = dict(os.environ, HVAE_SMOKE="1", OMP_NUM_THREADS="1", JUPYTER_CONFIG_DIR=str(state / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(state / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"),
               JUPYTER_RUNTIME_DIR=str(state / "runtime"))
    log = state / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`jupyter lab` did not start ({' '.join(command)}):\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield base, token, root, log
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def console_errors(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def test_a_chapter_opens_as_a_notebook_and_runs_in_smoke_mode(lab):
    base, token, root, log = lab
    with chromium.browser_context(viewport={"width": 1400, "height": 900}) as context:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        page = context.new_page()
        errors = console_errors(page)
        page.goto(f"{base}lab/tree/{CHAPTER}?token={token}")
        panel = page.locator(".jp-NotebookPanel")
        panel.locator(".jp-Cell").first.wait_for(timeout=120_000)
        assert page.locator(".jp-FileEditor").count() == 0, f"{CHAPTER} opened as a text file, not as a notebook"
        assert panel.locator(".jp-MarkdownCell h1").first.inner_text().startswith("Chapter 1")
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=120_000)

        code = panel.locator(".jp-CodeCell")
        SHOTS.mkdir(parents=True, exist_ok=True)
        try:
            for i in range(len(FIRST_CELLS)):  # one after the other, as a student does
                cell = code.nth(i)
                cell.locator(".jp-InputPrompt").click()
                page.wait_for_function("c => c.classList.contains('jp-mod-active')", arg=cell.element_handle())
                prompt = cell.locator(".jp-InputPrompt")
                for _ in range(3):  # a key press that a busy page drops is pressed again
                    page.keyboard.press("Control+Enter")  # run the selected cell
                    try:
                        page.wait_for_function("p => p.textContent.trim() !== '[ ]:'", arg=prompt.element_handle(),
                                               timeout=15_000)
                        break
                    except PlaywrightTimeout:
                        continue
                prompt.filter(has_text=f"[{i + 1}]:").wait_for(timeout=300_000)
        finally:
            page.screenshot(path=str(SHOTS / "lab_01_vae.png"))
        for i, expected in enumerate(FIRST_CELLS):
            cell = code.nth(i)
            assert cell.locator(".jp-InputPrompt").inner_text().strip() == f"[{i + 1}]:"
            shown = cell.locator(".jp-OutputArea").inner_text()
            assert "Traceback" not in shown and "Error" not in shown, shown
            for text in expected:
                assert text in shown, f"code cell {i + 1} of {CHAPTER} should print {text!r}; the page shows:\n{shown}"
        gaps = [float(g) for g in re.findall(r"gap = (\d+\.\d+) nats", code.nth(1).locator(".jp-OutputArea").inner_text())]
        assert len(gaps) == 2 and 0 < gaps[0] < 0.01 < 0.3 < gaps[1]  # the numbers the chapter explains

        # nbgrader in the notebook: the Validate button and the Create Assignment sidebar with the points
        assert panel.locator(".jp-Toolbar-item", has_text="Validate").count() == 1, broken_extension_message(
            "no Validate button on the notebook's toolbar")
        tab = page.locator(".jp-SideBar.jp-mod-right .lm-TabBar-tab[title='Nbgrader Create Assignment']")
        assert tab.count() == 1, broken_extension_message("no Create Assignment sidebar")
        tab.click()
        total = page.locator(".nbgrader-TotalPointsInput")
        total.wait_for()
        chapter_nb = next(nb for name, _, nb in assignments.chapters(REPO) if name == "01_vae")
        _, points, _ = assignments.points(chapter_nb)
        points += sum(d["points"] for d in assignments.notebooks.derivations(chapter_nb))  # the sidebar counts both
        assert total.input_value() == str(points), "the Create Assignment sidebar reads the chapter's points"
    assert not errors, f"browser console errors in JupyterLab: {errors}"


def test_nbgrader_panels_load_and_the_formgrader_lists_the_chapters(lab):
    base, token, root, log = lab
    with chromium.browser_context(viewport={"width": 1400, "height": 900}) as context:
        page = context.new_page()
        errors = console_errors(page)
        page.goto(f"{base}lab?token={token}")
        menubar = page.locator(".lm-MenuBar-itemLabel")
        menubar.first.wait_for(timeout=120_000)
        page.wait_for_timeout(2000)  # extensions add their menus once activated
        assert "Nbgrader" in menubar.all_inner_texts(), broken_extension_message(
            f"no Nbgrader menu in JupyterLab's menu bar ({menubar.all_inner_texts()})")

        def open_from_menu(item: str):
            menubar.filter(has_text="Nbgrader").click()
            entry = page.locator(".lm-Menu-itemLabel").get_by_text(item, exact=True)
            assert entry.count() == 1, broken_extension_message(f"no {item!r} in the Nbgrader menu")
            entry.click()

        open_from_menu("Formgrader")
        frame = None
        for _ in range(120):
            frame = next((f for f in page.frames if "/formgrader" in f.url), None)
            if frame is not None:
                break
            page.wait_for_timeout(500)
        assert frame is not None, broken_extension_message("the Formgrader tab has no formgrader page")
        frame.locator("table.dataTable tbody tr td").first.wait_for(timeout=60_000)
        listed = frame.locator("table.dataTable tbody tr").evaluate_all(
            "rows => rows.map(r => r.querySelector('td').textContent.trim())")
        assert listed == CHAPTERS, f"the formgrader should list every chapter of the course: {listed}"

        open_from_menu("Assignment List")
        assignments_panel = page.locator("#nbgrader-assignment-list")
        for section in ("Released assignments", "Downloaded assignments", "Submitted assignments"):
            assignments_panel.get_by_text(section, exact=True).wait_for(timeout=30_000)

        open_from_menu("Course List")
        page.locator("#nbgrader-course-list").get_by_text(assignments.COURSE_ID).wait_for(timeout=30_000)
    assert not errors, f"browser console errors in JupyterLab: {errors}"
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
