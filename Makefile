# `make test` and `make demo` create .venv when it is missing and install everything into it.
PY := .venv/bin/python
STAMP := .venv/.installed

# The Hugging Face tests again with transformers 4.57 (the oldest release the `hf` extra allows) in a venv of its own
TF4 := .venv-transformers4/bin/python
TF4_STAMP := .venv-transformers4/.installed
TF4_TESTS := tests/test_hf_frontend.py tests/test_hf_surgery.py tests/test_other_tracers.py

.PHONY: install test test-transformers4 demo lint bench clean

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

$(TF4_STAMP): pyproject.toml
	test -x $(TF4) || python3 -m venv .venv-transformers4
	$(TF4) -m pip install --quiet --upgrade pip
	$(TF4) -m pip install --quiet torch==2.13.0
	$(TF4) -m pip install --quiet -e '.[dev]' 'transformers==4.57.6'
	touch $(TF4_STAMP)

test-transformers4: $(TF4_STAMP)
	$(TF4) -m pytest -n 2 $(TF4_TESTS)

demo: $(STAMP)
	$(PY) -m hetsurgery demo

lint: $(STAMP)
	$(PY) -m ruff check hetsurgery tests tutorials bench
	$(PY) -m mypy hetsurgery

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	$(PY) -m bench

clean:
	rm -rf .venv .venv-transformers4 *.egg-info .pytest_cache .ruff_cache
