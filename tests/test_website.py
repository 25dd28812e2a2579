"""tools/website.py without a browser: what `make site` stages for Sphinx, and the one-line errors
of a missing set-up. The site itself is tested in a browser by tests/test_site_browser.py."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

import chromium

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import website  # noqa: E402

CHAPTERS = sorted(p.stem for p in (REPO / "solutions").glob("*.py"))


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    return website.stage(REPO, tmp_path_factory.mktemp("site") / "src")


def test_the_landing_page_is_the_readme_with_every_page_listed(staged):
    index = (staged / "index.md").read_text(encoding="utf-8")
    assert index.startswith((REPO / "README.md").read_text(encoding="utf-8").rstrip())
    for name in CHAPTERS:
        assert f"\nsolutions/{name}\n" in index
    for page in ("docs/instructors", "docs/architecture", "benchmarks/RESULTS", "api/hvae_lib.training"):
        assert f"\n{page}\n" in index
    for guide in website.GUIDES:  # at the repository's paths, so the README's links resolve
        assert (staged / guide).read_bytes() == (REPO / guide).read_bytes()


def test_a_chapter_page_is_its_solution_with_the_worksheet_to_download(staged):
    for name in CHAPTERS:
        page = json.loads((staged / "solutions" / f"{name}.ipynb").read_text(encoding="utf-8"))
        solution = json.loads((REPO / "solutions" / f"{name}.ipynb").read_text(encoding="utf-8"))
        box = [c for c in page["cells"] if c.get("id") == "site-download"]
        assert len(box) == 1 and f"{{download}}`chapters/{name}.ipynb <../chapters/{name}.ipynb>`" in box[0]["source"]
        assert page["cells"][0] == solution["cells"][0] and page["cells"][1] is not None
        assert page["cells"][1]["id"] == "site-download"  # right after the title cell
        assert [c for c in page["cells"] if c.get("id") != "site-download"] == solution["cells"]  # outputs kept
        assert (staged / "chapters" / f"{name}.ipynb").read_bytes() == (REPO / "chapters" / f"{name}.ipynb").read_bytes()


def test_the_api_reference_covers_every_module_in_the_order_of_the_layers(staged):
    pages = website.api_pages(REPO)
    modules = [m for ms in pages.values() for m in ms]
    on_disk = sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                     for p in (REPO / "hvae_lib").rglob("*.py"))
    assert sorted(modules) == on_disk and len(set(modules)) == len(modules)  # each module once
    order = website.layer_order(REPO)
    entries = [p.removeprefix("hvae_lib.") for p in pages if p != "hvae_lib"]
    assert entries == sorted(entries, key=order.index), "API pages follow pyproject.toml's layers, top first"
    text = (staged / "api" / "hvae_lib.probability.rst").read_text()
    assert ".. automodule:: hvae_lib.probability.residual_normal\n   :members:" in text


def test_staging_again_rewrites_nothing_and_removes_what_is_gone(staged):
    stale = staged / "solutions" / "99_removed.ipynb"
    stale.write_text("{}")
    before = {p: p.stat().st_mtime_ns for p in staged.rglob("*") if p.is_file() and p != stale}
    website.stage(REPO, staged)
    assert not stale.exists()
    assert {p: p.stat().st_mtime_ns for p in staged.rglob("*") if p.is_file()} == before  # Sphinx rebuilds nothing


def test_build_without_the_vendored_scripts_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setattr(website, "ASSETS", tmp_path / "none")
    with pytest.raises(website.SiteError, match=r"run `make site`"):
        website.build(REPO, tmp_path / "out")


def test_vendoring_without_npm_names_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(website.shutil, "which", lambda name: None)
    monkeypatch.setattr(website, "ASSETS", tmp_path / "assets")
    with pytest.raises(website.SiteError, match=r"apt-get install npm"):
        website.vendor_assets()
    assert website.main(["assets"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the site needs npm once") and err.count("\n") == 1  # one line, no traceback


def test_docstrings_keep_their_plain_text_bars():
    spec = importlib.util.spec_from_file_location("site_conf", REPO / "docs" / "site" / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    lines = ["KL(q(z|x) || p(z)), max |gamma_c|", "the ``a|b`` literal stays"]
    conf.plain_text_pipes(None, "function", "f", None, {}, lines)
    assert lines == [r"KL(q(z\|x) \|\| p(z)), max \|gamma_c\|", "the ``a|b`` literal stays"]
    assert conf.mathjax_path == "mathjax/tex-chtml.js" and conf.mermaid_use_local  # nothing from a CDN


def test_without_chromium_the_browser_tests_skip_naming_the_package_but_fail_in_ci(monkeypatch):
    monkeypatch.setattr(chromium, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"Debian's package `chromium`"):
        chromium.require_browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"CI must run the browser tests"):
        chromium.require_browser()
