# NormGate — `make run` and `make test` are the whole set-up (README).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NORMGATE_HOST ?= 127.0.0.1
NORMGATE_PORT ?= 8000
export NORMGATE_HOST NORMGATE_PORT

.PHONY: install run test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and exactly these versions: pip takes them from the machine's disk (SPEC / brief).
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
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

clean:
	rm -rf $(VENV) .pytest_cache
