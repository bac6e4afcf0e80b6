# `make test` and `make demo` create .venv when it is missing and install everything into it.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	# a CPU build of torch lies on this machine's disk; install it before anything can ask for torch
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,hf]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check hetsurgery tests tutorials bench
	$(PY) -m mypy hetsurgery
	$(PY) -m pytest -n 2 --doctest-modules hetsurgery tests

demo: $(STAMP)
	$(PY) -m hetsurgery demo

lint: $(STAMP)
	$(PY) -m ruff check hetsurgery tests tutorials bench
	$(PY) -m mypy hetsurgery

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	$(PY) -m bench

clean:
	rm -rf .venv *.egg-info .pytest_cache .ruff_cache
