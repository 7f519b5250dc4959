# Every target installs what is missing first; VENV, PYTHON and PYTEST_ARGS can be overridden.
VENV ?= .venv
PY := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV)/bin/python,$(VENV)/bin/python)
PYTEST_ARGS ?=

.PHONY: install test test-fast demo clean help

help:
	@echo "make install   create $(VENV) (unless a venv is active) and install torch, fairseq-fixed and the rest"
	@echo "make test      install, then run the whole test suite (CPU, no network)"
	@echo "make test-fast install, then the tests without the slow end-to-end runs"
	@echo "make demo      install, then the embedded demo (synthetic corpus, baseline vs encouraging loss)"

install:
	@VENV=$(VENV) bash scripts/install.sh

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: install
	PYTHON=$(PY) bash scripts/demo.sh

clean:
	rm -rf .pytest_cache build
