"""The course website (`make site`, tools/website.py) in a real browser: headless Chromium from
Debian's packages driven by Playwright (tests/chromium.py), the site served from a local port.

Every page loads with no console error and no failed request; every image decodes; every formula
is typeset by the vendored MathJax with no error node and no TeX left as text, and each display
formula fits the text column at 1280 px (docs/site/_static/fit_formulas.js); the architecture's
Mermaid picture is drawn; every internal link, and the anchor it points to, resolves; no page
scrolls sideways on a 390 px phone; the search box finds Chapter 4 for "residual normal"; and
screenshots of Chapter 4 at 1280 and 390 px are written to _site/screenshots/ (not committed).
The site under test is _site/html as `make site` left it (make test builds it first); it is built
here only when missing.
"""
from __future__ import annotations

import json
import re
import struct
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urlsplit

import pytest

import chromium

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "_site" / "html"
SHOTS = REPO / "_site" / "screenshots"
CHAPTER_4 = "solutions/04_nvae_taming_kl.html"
SECTION = "the-residual-normal-posterior"  # where the screenshots look: its prose, formulas and code
DESKTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}

pytestmark = [pytest.mark.browser, pytest.mark.slow]

sys.path.insert(0, str(REPO / "tools"))
import website  # noqa: E402


@pytest.fixture(scope="module")
def site() -> Path:
    chromium.require_browser()  # skip (or fail in CI) before spending a minute on a build
    if not (SITE / "index.html").is_file():
        try:
            website.build()
        except website.SiteError as err:
            pytest.fail(f"could not build the site: {err}")
    return SITE


def pages(root: Path) -> list[str]:
    """Every page of the site (Sphinx's own _static, _images and _downloads are not pages)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.html")
                  if not p.relative_to(root).parts[0].startswith("_"))


SETTLE = """async () => {
    if (window.MathJax && MathJax.startup) await MathJax.startup.promise;
    for (const m of document.querySelectorAll('.mermaid')) m.scrollIntoView();  // drawn when visible
    window.scrollTo(0, 0);
}"""

INSPECT = """async () => {
    const imgs = [...document.images];
    imgs.forEach(i => { i.loading = 'eager'; });
    const undecoded = (await Promise.all(imgs.map(i => i.decode().then(() => null, () => i.currentSrc || i.src))))
        .filter(Boolean).concat(imgs.filter(i => i.complete && i.naturalWidth === 0).map(i => i.src));
    const maths = [...document.querySelectorAll('.math')];  // Sphinx's \\(..\\) and \\[..\\] elements
    // TeX the parser did not recognise as maths stays text: look for macros outside code and formulas.
    const article = document.querySelector('article') || document.body;
    const prose = article.cloneNode(true);
    prose.querySelectorAll('pre, code, script, style, mjx-container, .cell_output, .highlight, dl.py')
        .forEach(n => n.remove());
    const rawTex = prose.textContent.match(/\\$[^$\\n]{0,40}\\\\[a-zA-Z]{2,}|\\\\(frac|mathbb|mathcal|mathrm|sum|log|mid)\\b/g) || [];
    return {
        images: imgs.length, undecoded: [...new Set(undecoded)],
        formulas: maths.length,
        untypeset: maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80)),
        // fit_formulas.js sets a display formula up to 25% wider than the column smaller; wider ones scroll
        tooWide: [...document.querySelectorAll('mjx-container[display="true"]')]
            .filter(m => m.scrollWidth > m.clientWidth + 1)
            .map(m => `${m.scrollWidth} px in ${m.clientWidth}: ${m.closest('.math')?.textContent.slice(0, 60)}`),
        mathErrors: [...document.querySelectorAll('mjx-merror')].map(e => e.getAttribute('data-mjx-error') || e.textContent),
        rawTex: rawTex.slice(0, 5),
        diagrams: document.querySelectorAll('.mermaid').length,
        drawn: [...document.querySelectorAll('.mermaid')].filter(m => m.querySelector('svg g.node')).length,
        diagramNodes: [...document.querySelectorAll('.mermaid svg g.node')].length,
        links: [...document.querySelectorAll('a[href]')].map(a => a.href),
        title: document.title,
    };
}"""

OVERFLOW = """() => {
    const width = document.documentElement.clientWidth;
    const scrolls = e => { for (let a = e.parentElement; a && a !== document.body; a = a.parentElement)
        if (getComputedStyle(a).overflowX !== 'visible') return true; return false; };  // inside a box that scrolls
    const wide = [...document.querySelectorAll('article *')]
        .filter(e => (e.getBoundingClientRect().right > width + 1 || e.scrollWidth > e.clientWidth + 1) && !scrolls(e))
        .slice(0, 3).map(e => e.tagName.toLowerCase() + (e.className ? '.' + String(e.className).split(' ')[0] : '')
                              + ': ' + e.textContent.slice(0, 40));
    return {scrollWidth: document.documentElement.scrollWidth, width, wide};
}"""


@pytest.fixture(scope="module")
def crawl(site):
    """Visit every page once at 1280 px (and measure it at 390 px); what each page showed."""
    report = {}
    with chromium.serve(site) as base, chromium.browser_context(viewport=DESKTOP) as context:
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
        page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
        for name in pages(site):
            problems.clear()
            response = page.goto(base + name, wait_until="load")
            page.evaluate(SETTLE)
            if page.locator(".mermaid").count():
                # drawn means laid out: Mermaid inserts its <svg> before the boxes, so wait for the boxes
                page.wait_for_function("() => [...document.querySelectorAll('.mermaid')].every(m => m.querySelector('svg g.node'))",
                                       timeout=60_000)
            seen = page.evaluate(INSPECT)
            page.set_viewport_size(PHONE)
            seen["phone"] = page.evaluate(OVERFLOW)
            page.set_viewport_size(DESKTOP)
            seen["status"] = response.status if response else None
            seen["problems"] = list(problems)
            report[name] = seen
        report = {"base": base, "pages": report, "links": check_links(base, report)}
    return report


def check_links(base: str, report: dict) -> dict:
    """Every same-origin link: the file answers 200 and, for a link with an anchor into a page, the
    page has an element with that id. Returns {'checked': unique targets, 'broken': [...], ...}."""
    fetched: dict[str, tuple[int, set[str]]] = {}

    def fetch(url: str) -> tuple[int, set[str]]:
        if url not in fetched:
            try:
                with urllib.request.urlopen(url, timeout=30) as r:
                    body = r.read()
                    ids = set(re.findall(rb'\b(?:id|name)="([^"]+)"', body)) if url.endswith(".html") else set()
                    fetched[url] = (r.status, {i.decode() for i in ids})
            except urllib.error.HTTPError as err:
                fetched[url] = (err.code, set())
        return fetched[url]

    targets, broken, external, total = set(), [], set(), 0
    for name, seen in report.items():
        for href in seen["links"]:
            if not href.startswith(base):
                if urlsplit(href).scheme in ("http", "https"):
                    external.add(href)
                continue
            total += 1
            url, anchor = urldefrag(href)
            url = url.split("?")[0]
            if url.endswith("/"):
                url += "index.html"
            if (url, anchor) in targets:
                continue
            targets.add((url, anchor))
            status, ids = fetch(url)
            if status != 200:
                broken.append(f"{name}: {href} answers {status}")
            elif anchor and url.endswith(".html") and anchor not in ids:
                broken.append(f"{name}: {href}: no element with id {anchor!r} in {url.removeprefix(base)}")
    return {"checked": len(targets), "total": total, "broken": broken, "external": sorted(external)}


def test_every_page_loads_without_console_errors(crawl):
    assert len(crawl["pages"]) >= 20, f"only {len(crawl['pages'])} pages: is the site complete?"
    bad = {n: s["problems"] for n, s in crawl["pages"].items() if s["problems"] or s["status"] != 200}
    assert not bad, "pages with console errors or failed requests:\n" + json.dumps(bad, indent=1)


def test_the_site_has_the_course(crawl):
    names = set(crawl["pages"])
    chapters = sorted(p.stem for p in (REPO / "solutions").glob("*.py"))
    assert {f"solutions/{c}.html" for c in chapters} <= names
    assert {"index.html", "docs/instructors.html", "docs/architecture.html", "benchmarks/RESULTS.html",
            "search.html"} <= names
    api = {n for n in names if n.startswith("api/")}
    entries = [p.stem if p.is_file() else p.name for p in (REPO / "hvae_lib").iterdir()
               if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()]
    assert {f"api/hvae_lib.{e}.html" for e in entries} <= api, "every subpackage has its API page"
    assert crawl["pages"]["index.html"]["title"].startswith("Deep hierarchical VAEs")
    for chapter in chapters:  # each chapter page links its worksheet for download
        links = crawl["pages"][f"solutions/{chapter}.html"]["links"]
        assert any(re.search(rf"/_downloads/[^/]+/{chapter}\.ipynb$", link) for link in links), chapter


def test_every_image_decodes(crawl):
    bad = {n: s["undecoded"] for n, s in crawl["pages"].items() if s["undecoded"]}
    assert not bad, f"images that do not decode: {bad}"
    chapters = [s for n, s in crawl["pages"].items() if n.startswith("solutions/")]
    assert all(s["images"] > 0 for s in chapters), "every chapter page shows the figures of its full run"


def test_every_formula_typesets(crawl):
    for name, seen in crawl["pages"].items():
        assert not seen["untypeset"], f"{name}: formulas MathJax did not typeset: {seen['untypeset'][:3]}"
        assert not seen["mathErrors"], f"{name}: MathJax errors: {seen['mathErrors'][:3]}"
        assert not seen["rawTex"], f"{name}: TeX left as text, not typeset: {seen['rawTex']}"
    assert sum(s["formulas"] for s in crawl["pages"].values()) > 500


def test_every_display_formula_fits_the_column_at_1280_px(crawl):
    wide = {n: s["tooWide"] for n, s in crawl["pages"].items() if s["tooWide"]}
    assert not wide, f"display formulas wider than the text at 1280 px (split them over lines): {wide}"


def test_the_architecture_picture_is_drawn(crawl):
    seen = crawl["pages"]["docs/architecture.html"]
    entries = len(re.findall(r'^    \w+\["', (REPO / "docs" / "architecture.md").read_text(), flags=re.M))
    assert seen["diagrams"] == 1 and seen["drawn"] == 1, "the Mermaid block of docs/architecture.md is not drawn"
    assert seen["diagramNodes"] == entries > 10  # one box per entry of hvae_lib


def test_every_internal_link_resolves(crawl):
    links = crawl["links"]
    assert links["checked"] > 100
    assert not links["broken"], "broken links:\n" + "\n".join(links["broken"][:20])


def test_no_page_scrolls_sideways_on_a_phone(crawl):
    wide = {n: s["phone"] for n, s in crawl["pages"].items() if s["phone"]["scrollWidth"] > s["phone"]["width"] + 1}
    assert not wide, f"pages wider than a 390 px phone: {wide}"


def test_search_finds_chapter_4(site):
    with chromium.serve(site) as base, chromium.browser_context(viewport=DESKTOP) as context:
        page = context.new_page()
        page.goto(base + "index.html")
        page.keyboard.press("Control+k")  # the theme's search dialog, as a reader opens it
        box = page.locator("input[name='q']:visible").first
        box.fill("residual normal")
        box.press("Enter")
        page.wait_for_url("**/search.html?q=residual*")
        page.wait_for_function("() => /found \\d+ page/.test(document.querySelector('#search-results')?.textContent)",
                               timeout=60_000)
        found = [urlsplit(h).path.lstrip("/") for h in
                 page.locator("#search-results ul.search li > a").evaluate_all("as => as.map(a => a.href)")]
    assert CHAPTER_4 in found[:3], f"Chapter 4 is not among the first three results for 'residual normal': {found}"


def png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_screenshots_of_chapter_4(site, crawl, capsys):
    """One chapter page at a laptop's and a phone's width, for a person to look at; then the numbers."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    written = []
    for viewport in (DESKTOP, PHONE):
        with chromium.serve(site) as base, chromium.browser_context(viewport=viewport) as context:
            page = context.new_page()
            page.goto(base + CHAPTER_4)
            page.evaluate(SETTLE)  # the formulas typeset first: they change the layout
            page.evaluate("id => document.getElementById(id).scrollIntoView({block: 'start'})", SECTION)
            page.wait_for_timeout(500)
            path = SHOTS / f"chapter4_{viewport['width']}px.png"
            page.screenshot(path=str(path))
            assert png_size(path) == (viewport["width"], viewport["height"])
            written.append(path)
    pages = crawl["pages"].values()
    with capsys.disabled():
        print(f"\nsite in the browser: {len(crawl['pages'])} pages, {sum(s['images'] for s in pages)} images decoded, "
              f"{sum(s['formulas'] for s in pages)} formulas typeset, {crawl['links']['checked']} internal link "
              f"targets resolved ({crawl['links']['total']} links), "
              f"{sum(s['drawn'] for s in pages)} diagram drawn; screenshots: {', '.join(map(str, written))}")
