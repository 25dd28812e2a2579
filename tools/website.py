"""The course as a static website: `make site` builds it offline into _site/html (Sphinx, myst-nb and
the book theme; docs/site/conf.py is its configuration).

    python tools/website.py assets    vendor MathJax and mermaid from npm into the environment, once
                                      (.venv/share/hvae-site; the only step that needs the network)
    python tools/website.py build     stage the pages in _site/src, then build _site/html

The site is the README as its landing page, one page per chapter from ``solutions/NN_name.ipynb``
with the outputs of the last full run (never re-executed), each linking its worksheet
``chapters/NN_name.ipynb`` for download, the instructors' guide, the architecture (its Mermaid
picture drawn in the browser), the benchmark results and an API reference generated from
``hvae_lib``'s docstrings, one page per top-level entry of the library, in the order of the layers
contract in pyproject.toml. Read it with ``python3 -m http.server --directory _site/html 8000``
(MathJax's fonts and mermaid's modules do not load from file:// URLs).

The pages are staged rather than read in place so that a chapter page can carry its download box
without a notebook in the repository changing, and the staged tree keeps the repository's relative
paths, so the README's links (``docs/instructors.md``) resolve on the site as they do on disk.
A staged file is rewritten only when its content changes: Sphinx then rebuilds only what changed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "_site"
CONF_DIR = ROOT / "docs" / "site"
ASSETS = Path(sys.prefix) / "share" / "hvae-site"  # docs/site/conf.py reads the same path

# npm package -> (version, {path in the package: path under ASSETS}). MathJax 3 is the major Sphinx's
# mathjax extension is written for; mermaid's version is the one sphinxcontrib-mermaid 2.1 defaults to.
NPM = {
    "mathjax": ("3.2.2", {"LICENSE": "mathjax/LICENSE", "es5/tex-chtml.js": "mathjax/tex-chtml.js",
                          "es5/input/": "mathjax/input/", "es5/output/": "mathjax/output/", "es5/ui/": "mathjax/ui/",
                          "es5/a11y/": "mathjax/a11y/", "es5/sre/": "mathjax/sre/", "es5/adaptors/": "mathjax/adaptors/"}),
    "mermaid": ("11.12.1", {"LICENSE": "mermaid/LICENSE", "dist/mermaid.esm.min.mjs": "mermaid/mermaid.esm.min.mjs",
                            "dist/chunks/mermaid.esm.min/": "mermaid/chunks/mermaid.esm.min/"}),
}
GUIDES = ["docs/instructors.md", "docs/architecture.md", "docs/cluster.md", "benchmarks/RESULTS.md"]


class SiteError(Exception):
    """A problem the user can fix; printed as one line, without a traceback."""


# ----------------------------------------------------------------------------- vendored JavaScript

def assets_stamp() -> str:
    return "\n".join(f"{name}@{version}" for name, (version, _) in NPM.items()) + "\n"


def assets_ready(dest: Path | None = None) -> bool:
    stamp = (dest or ASSETS) / "VERSIONS"
    return stamp.is_file() and stamp.read_text() == assets_stamp()


def vendor_assets(dest: Path | None = None) -> None:
    """Fetch MathJax and mermaid with `npm pack` (the package tarballs, no node_modules) and keep the
    files the site serves. Does nothing when the pinned versions are already there."""
    dest = dest or ASSETS
    if assets_ready(dest):
        print(f"MathJax and mermaid already vendored in {dest}")
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SiteError("the site needs npm once, to vendor MathJax and mermaid from the npm registry: install "
                        "Node.js's npm (Debian: apt-get install npm), then run `make site` again")
    specs = [f"{name}@{version}" for name, (version, _) in NPM.items()]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([npm, "pack", "--silent", *specs], cwd=tmp, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise SiteError(f"`npm pack {' '.join(specs)}` failed (is the npm registry reachable?): "
                            f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        staged = Path(tmp) / "assets"
        for name, (version, keep) in NPM.items():
            with tarfile.open(Path(tmp) / f"{name}-{version}.tgz") as tar:
                for member in tar.getmembers():
                    if not member.isfile():
                        continue
                    inner = member.name.removeprefix("package/")
                    target = next((to + inner[len(frm):] for frm, to in keep.items()
                                   if inner == frm or (frm.endswith("/") and inner.startswith(frm))), None)
                    if target is None:
                        continue
                    path = staged / target
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(tar.extractfile(member).read())
        (staged / "VERSIONS").write_text(assets_stamp())
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged, dest)
    print(f"vendored {', '.join(specs)} into {dest}")


# ----------------------------------------------------------------------------- staging the pages

def write_if_changed(path: Path, data: bytes | str, written: set[Path]) -> None:
    data = data.encode() if isinstance(data, str) else data
    written.add(path)
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def chapter_names(root: Path = ROOT) -> list[str]:
    """The chapters, NN_name, in order: every solutions/NN_name.py with its .ipynb pair."""
    names = sorted(p.stem for p in (root / "solutions").glob("*.py"))
    missing = [n for n in names if not (root / "solutions" / f"{n}.ipynb").is_file()]
    if missing:
        raise SiteError(f"solutions/{missing[0]}.ipynb is missing: run `make sync` to generate it from its .py")
    return names


def chapter_page(root: Path, name: str) -> str:
    """The solution notebook with a box after its title cell that links the worksheet for download."""
    nb = json.loads((root / "solutions" / f"{name}.ipynb").read_text(encoding="utf-8"))
    box = (":::{admonition} Work through this chapter yourself\n:class: tip\n"
           "This page is the solution notebook, with the figures and printouts of a full run. The worksheet, "
           f"with the exercises to complete, is {{download}}`chapters/{name}.ipynb <../chapters/{name}.ipynb>`: "
           "open it in JupyterLab (`make lab` in the repository, where "
           f"`chapters/{name}.py` opens as the same notebook). "
           f"The solution notebook itself: {{download}}`solutions/{name}.ipynb <{name}.ipynb>`.\n:::")
    cell = {"cell_type": "markdown", "id": "site-download", "metadata": {}, "source": box}
    first = next((i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"), -1)
    nb["cells"].insert(first + 1, cell)
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def layer_order(root: Path = ROOT) -> list[str]:
    """hvae_lib's top-level entries in the order of pyproject.toml's layers contract, top first."""
    contracts = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["id"] == "layers")
    return [name.strip() for layer in layers for name in layer.split("|")]


def api_pages(root: Path = ROOT) -> dict[str, list[str]]:
    """Page -> the modules it documents: the package itself, then one page per top-level entry of
    hvae_lib (a subpackage with every module under it, or a top-level module), read from the files."""
    lib = root / "hvae_lib"
    entries = sorted(p.stem if p.is_file() else p.name for p in lib.iterdir()
                     if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file())
    order = layer_order(root)
    entries.sort(key=lambda e: (order.index(e) if e in order else len(order), e))
    pages = {"hvae_lib": ["hvae_lib"]}
    for entry in entries:
        path = lib / entry
        if path.is_dir():
            modules = sorted(".".join(("hvae_lib",) + p.relative_to(lib).with_suffix("").parts).removesuffix(".__init__")
                             for p in path.rglob("*.py"))
            # a subpackage's __init__ first, then its modules and sub-subpackages in order
            pages[f"hvae_lib.{entry}"] = sorted(modules, key=lambda m: (m != f"hvae_lib.{entry}", m))
        else:
            pages[f"hvae_lib.{entry}"] = [f"hvae_lib.{entry}"]
    return pages


def api_page(page: str, modules: list[str]) -> str:
    """reStructuredText, which autodoc's output is written in (in MyST it would need eval-rst)."""
    title = f"``{page}``"
    lines = [title, "=" * len(title), ""]
    if page == "hvae_lib":
        lines += ["The package; each entry of the library has its own page, in the order of the layers "
                  "(each imports only those after it: :doc:`../docs/architecture`).", ""]
    for module in modules:
        if module != page:
            heading = f"``{module}``"
            lines += [heading, "-" * len(heading), ""]
        lines += [f".. automodule:: {module}", "   :members:", "   :show-inheritance:", ""]
    return "\n".join(lines)


TOCTREES = """

## The pages of this site

```{{toctree}}
:caption: Chapters
:maxdepth: 1

{chapters}
```

```{{toctree}}
:caption: Guides and results
:maxdepth: 1

{guides}
```

```{{toctree}}
:caption: API reference
:maxdepth: 1

{api}
```
"""


def stage(root: Path = ROOT, src: Path | None = None) -> Path:
    """Write the site's sources under _site/src (the repository's relative paths) and return it."""
    src = src or root / "_site" / "src"
    written: set[Path] = set()
    chapters = chapter_names(root)
    pages = api_pages(root)
    readme = (root / "README.md").read_text(encoding="utf-8")
    toc = TOCTREES.format(chapters="\n".join(f"solutions/{n}" for n in chapters),
                          guides="\n".join(g.removesuffix(".md") for g in GUIDES),
                          api="\n".join(f"api/{p}" for p in pages))
    write_if_changed(src / "index.md", readme.rstrip() + "\n" + toc, written)
    for name in chapters:
        write_if_changed(src / "solutions" / f"{name}.ipynb", chapter_page(root, name), written)
        worksheet = root / "chapters" / f"{name}.ipynb"
        if not worksheet.is_file():
            raise SiteError(f"chapters/{name}.ipynb is missing: run `make sync` to generate the worksheet")
        write_if_changed(src / "chapters" / f"{name}.ipynb", worksheet.read_bytes(), written)
    for guide in GUIDES:
        write_if_changed(src / guide, (root / guide).read_bytes(), written)
    for page, modules in pages.items():
        write_if_changed(src / "api" / f"{page}.rst", api_page(page, modules), written)
    for path in sorted(src.rglob("*"), reverse=True):  # what an earlier build staged and this one did not
        if path.is_file() and path not in written:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return src


# ----------------------------------------------------------------------------- the build

def build(root: Path = ROOT, out: Path | None = None, quiet: bool = True) -> Path:
    """Stage the pages and run Sphinx; returns the folder of the website. Warnings fail the build."""
    if not assets_ready():
        raise SiteError(f"MathJax and mermaid are not vendored in {ASSETS}: run `make site` (or python "
                        "tools/website.py assets), which needs the npm registry once")
    out = out or root / "_site"
    start = time.perf_counter()
    src = stage(root, out / "src")
    html = out / "html"
    cmd = [sys.executable, "-m", "sphinx", "build", "-b", "html", "-c", str(CONF_DIR), "-d", str(out / "doctrees"),
           "-j", "auto", "-W", "--keep-going", *(["-q"] if quiet else []), str(src), str(html)]
    proc = subprocess.run(cmd, cwd=root)
    if proc.returncode != 0:
        # Sphinx keeps the pages it read with warnings: forget them, or the next build would pass unread
        shutil.rmtree(out / "doctrees", ignore_errors=True)
        raise SiteError(f"Sphinx failed (its warnings are above; a warning fails the build): {' '.join(cmd)}")
    pages = sum(1 for p in html.rglob("*.html") if not p.relative_to(html).parts[0].startswith("_"))
    print(f"built {pages} pages in {time.perf_counter() - start:.0f} s: {html / 'index.html'}\n"
          f"read it with: python3 -m http.server --directory {os.path.relpath(html)} 8000  "
          f"(then http://localhost:8000)")
    return html


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("assets", help="vendor MathJax and mermaid from npm (once)")
    b = sub.add_parser("build", help="build _site/html")
    b.add_argument("--verbose", action="store_true", help="show Sphinx's progress")
    args = parser.parse_args(argv)
    try:
        if args.command == "assets":
            vendor_assets()
        else:
            build(quiet=not args.verbose)
    except SiteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
