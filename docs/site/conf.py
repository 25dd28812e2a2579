"""Sphinx configuration of the course website (`make site`, tools/website.py stages the pages).

Sphinx with myst-nb and sphinx-book-theme: the notebooks are rendered with their stored outputs
(never executed), MathJax and mermaid come from the environment (vendored from npm by
`tools/website.py assets`), and nothing on a page loads from the network.
"""
import re
import sys
from pathlib import Path

ASSETS = Path(sys.prefix) / "share" / "hvae-site"  # tools/website.py vendors MathJax and mermaid here

project = "Deep hierarchical VAEs"
author = "the hvae-course authors"
copyright = "the hvae-course authors, MIT licence"
html_title = "Deep hierarchical VAEs — an open course"

extensions = [
    "myst_nb",  # Markdown (MyST) and notebooks; brings myst_parser
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinxcontrib.mermaid",
]
exclude_patterns = ["chapters/**"]  # the worksheets are downloads, not pages

# Notebooks: the outputs of the last full run, as committed; never executed here.
nb_execution_mode = "off"
nb_merge_streams = True  # one block per cell for stdout, as JupyterLab shows it
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_fence_as_directive = ["mermaid"]  # docs/architecture.md's ```mermaid block becomes a picture
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # chapters start at "#" and may skip a level in their outputs

# Maths offline: the vendored MathJax 3. An undefined macro is an error node, not red text, so the
# browser test's "no math error nodes" also catches a typo in a macro's name.
mathjax_path = "mathjax/tex-chtml.js"
mathjax3_config = {"tex": {"packages": {"[-]": ["noundefined"]}}}
mermaid_use_local = "mermaid/mermaid.esm.min.mjs"
mermaid_version = ""  # never a CDN
mermaid_d3_zoom = False

# The API reference: docstrings as written (plain text with ``literals``), members in source order.
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "signature"
default_role = "code"
add_module_names = False


html_theme = "sphinx_book_theme"
html_static_path = ["_static", str(ASSETS)]
html_css_files = ["course.css"]
html_js_files = ["fit_formulas.js"]
html_theme_options = {
    "home_page_in_toc": False,  # the title above the menu leads home
    "show_toc_level": 2,
    "use_download_button": False,  # each chapter has its own box: worksheet and solution notebook
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
}
html_show_sourcelink = False
html_last_updated_fmt = None
html_context = {"default_mode": "light"}  # the figures are drawn on white; an unset mode logs a console error
html_favicon = "_static/favicon.svg"  # else the browser asks for /favicon.ico and gets a 404
html_search_scorer = str(Path(__file__).parent / "search_scorer.js")  # chapters first at equal match; see the file


def plain_text_pipes(app, what, name, obj, options, lines):
    """hvae_lib's docstrings write maths as plain text (``q(z|x)``, ``|gamma_c|``), where reST would
    read ``|...|`` as a substitution: escape every | outside ``literals``."""
    for i, line in enumerate(lines):
        parts = re.split(r"(``.+?``)", line)
        lines[i] = "".join(p if p.startswith("``") else p.replace("|", r"\|") for p in parts)


def setup(app):
    app.connect("autodoc-process-docstring", plain_text_pipes)
