# NormGate — `make run` and `make test` are the whole set-up (README).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NORMGATE_HOST ?= 127.0.0.1
NORMGATE_PORT ?= 8000
export NORMGATE_HOST NORMGATE_PORT

.PHONY: install run test lint constraints bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and exactly these versions: pip takes them from the machine's disk (a newer or unpinned torch
	# would be a multi-GB CUDA download).
	$(PY) -m pip install --quiet -c constraints.txt torch==2.14.1 torchvision==0.29.1
	# Every transitive package pinned by constraints.txt, so a fresh install is the one the tests ran on.
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m service

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy models service

test: install lint
	$(PY) -m pytest

# Re-pin every installed package after a change to pyproject.toml's pins (run on a fresh `make install`).
constraints: install
	{ printf '%s\n' '# Every package of a full `make install` (runtime, synth, reference and dev extras), pinned. Applied by' \
	  '# `make install`; regenerate with `make constraints` after changing pyproject.toml.'; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^normgate'; } > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache
