# Two set-up commands: `make demo` and `make test`. Both create or refresh .venv as needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sclearn-installed

.PHONY: test test-all demo lint clean

# Reinstall only when pyproject.toml changes (or the venv is missing): a second `make test` is instant.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,viz,tb]'
	touch $(STAMP)

# The main job, offline: joint SC vs supervised-only on Fashion-MNIST, with curves, probes and hub folders
# (about 6 minutes on 2 idle CPU cores, estimated; far longer on a busy machine).
demo: $(STAMP)
	$(PY) recipes/demo.py

# One torch thread per test process: the test models are tiny, and a second thread only adds contention.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

# Everything, including the tests marked slow and realdata.
test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

lint: $(STAMP)
	$(PY) -m ruff check sclearn tests recipes benchmarks

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
