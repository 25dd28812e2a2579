# The README's commands. Each target sets up .venv on first use; nothing else to install by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CHROMIUM := /usr/bin/chromium
RUN ?= runs/vae_fashion
COURSE ?= course

.PHONY: setup train test layering architecture unit notebooks-check notebooks-run sync lab refresh-solutions assignments site debian-browser clean

setup: $(STAMP) $(if $(wildcard $(FASHION)),,debian-data) $(if $(wildcard $(CHROMIUM)),,debian-browser)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	# JupyterLab opens a chapter's .py as a notebook (jupytext) on double-click.
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp tools/jupyterlab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $(STAMP)

# Fashion-MNIST offline from Debian's package when we are root on Debian (as CI is); else skip
# quietly: hvae_lib.data then downloads it, or says how to get it.
debian-data:
	@if [ "$$(id -u)" = 0 ] && [ -f /etc/debian_version ] && [ ! -f $(FASHION) ]; then \
	  echo "installing Debian's dataset-fashion-mnist (offline Fashion-MNIST)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
	  || echo "note: could not install dataset-fashion-mnist; the data loader will try a download instead"; \
	fi

# Chromium for the browser tests (tests/test_site_browser.py, tests/test_lab_browser.py), from Debian's
# packages when we are root on Debian, as CI is (about 2 minutes); else they skip, naming the package.
debian-browser:
	@if [ "$$(id -u)" = 0 ] && [ -f /etc/debian_version ] && [ ! -x $(CHROMIUM) ]; then \
	  echo "installing Debian's chromium for the browser tests (about 2 minutes)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
	  || echo "note: could not install chromium; the browser tests will skip"; \
	fi

train: setup
	$(PY) -m hvae_lib.train --preset vae_fashion --out $(RUN)

test: setup layering notebooks-check site unit notebooks-run

# hvae_lib's import contracts (pyproject.toml) and the picture of them in docs/architecture.md.
layering: setup
	$(VENV)/bin/lint-imports --no-cache
	$(PY) tools/architecture.py check

architecture: setup
	$(PY) tools/architecture.py write

unit: setup
	$(PY) -m pytest tests

notebooks-check: setup
	$(PY) tools/notebooks.py check

notebooks-run: setup
	HVAE_SMOKE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -p no:cacheprovider --nbval-lax --nbval-current-env chapters solutions

sync: setup
	$(PY) tools/notebooks.py sync

refresh-solutions: setup
	$(PY) tools/notebooks.py execute solutions/*.py

# The nbgrader course folder (docs/instructors.md). Unlike the other targets this one never
# reinstalls an existing .venv (it only reads the notebooks): setup runs only when .venv is missing.
assignments: $(if $(wildcard $(PY)),,setup)
	$(PY) tools/assignments.py build --out $(COURSE)

lab: setup
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root)

# The course website in _site/html (tools/website.py): MathJax and mermaid come from npm once, then
# the build needs no network. Read it with: python3 -m http.server --directory _site/html 8000
site: setup
	$(PY) tools/website.py assets
	$(PY) tools/website.py build

clean:
	rm -rf $(VENV) runs _site
