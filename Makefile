# `make test` creates its own environment from the project's files, installs everything and runs the suite.
PYTHON ?= python3
VENV ?= .venv
VENV4 ?= .venv-transformers4
VENV_DOCS ?= .venv-docs

.PHONY: test test-transformers4 lint docs demo clean

$(VENV)/.installed: pyproject.toml requirements/base.txt requirements/test.txt requirements/no-deps.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -r requirements/test.txt
	$(VENV)/bin/python -m pip install -q --no-deps -r requirements/no-deps.txt
	$(VENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

$(VENV4)/.installed: pyproject.toml requirements/base.txt requirements/test-transformers4.txt requirements/no-deps.txt
	$(PYTHON) -m venv $(VENV4)
	$(VENV4)/bin/python -m pip install -q -r requirements/test-transformers4.txt
	$(VENV4)/bin/python -m pip install -q --no-deps -r requirements/no-deps.txt
	$(VENV4)/bin/python -m pip install -q --no-deps -e .
	touch $@

# The docs site has its own small environment: griffe reads the docstrings statically (no torch).
$(VENV_DOCS)/.installed: requirements/docs.txt
	$(PYTHON) -m venv $(VENV_DOCS)
	$(VENV_DOCS)/bin/python -m pip install -q -r requirements/docs.txt
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/python examples/demo.py

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest

test-transformers4: $(VENV4)/.installed
	$(VENV4)/bin/python -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check steerable tests benchmarks examples
	$(VENV)/bin/ruff format --check steerable tests benchmarks examples
	$(VENV)/bin/mypy steerable

docs: $(VENV_DOCS)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV_DOCS)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) $(VENV4) $(VENV_DOCS) site .pytest_cache .mypy_cache .ruff_cache
