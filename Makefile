# Every target installs what is missing first; VENV, PYTHON and PYTEST_ARGS can be overridden.
VENV ?= .venv
PY := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV)/bin/python,$(VENV)/bin/python)
PYTEST_ARGS ?=

.PHONY: install test test-fast test-deep mutate mutate-sample demo clean help

help:
	@echo "make install   create $(VENV) (unless a venv is active) and install torch, fairseq-fixed and the rest"
	@echo "make test      install, then run the whole test suite (CPU, no network)"
	@echo "make test-fast install, then the tests without the slow end-to-end runs"
	@echo "make demo      install, then the embedded demo (synthetic corpus, baseline vs encouraging loss)"
	@echo "make test-deep install, then the property tests with a far larger search (minutes)"
	@echo "make mutate    install mutmut, then mutation-test encouraging_loss/ and fairseq_plugins/ (hours)"
	@echo "make mutate-sample  the same on a random sample of each package, with survival rates (MUTATE_SAMPLE=80)"

install:
	@VENV=$(VENV) bash scripts/install.sh

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-deep: install
	EL_TRITON_EXAMPLES=$${EL_TRITON_EXAMPLES:-60} $(PY) -m pytest -q --hypothesis-profile=deep \
		tests/core/test_properties.py $(PYTEST_ARGS)

# mutmut copies the code to mutants/ and runs the tests configured in pyproject.toml's [tool.mutmut]
# once per mutant, one at a time with one thread (the CPU sweep's workers are not fork-safe).
MUTATE_ARGS ?=
mutate: install
	$(PY) -m pip install -q "mutmut>=3.8,<4"
	rm -rf mutants
	OMP_NUM_THREADS=1 $(dir $(PY))mutmut run --max-children 1 $(MUTATE_ARGS)
	$(dir $(PY))mutmut results

MUTATE_SAMPLE ?= 80
mutate-sample: install
	$(PY) -m pip install -q "mutmut>=3.8,<4"
	$(PY) tests/mutation_sample.py --per-package $(MUTATE_SAMPLE)

demo: install
	PYTHON=$(PY) bash scripts/demo.sh

clean:
	rm -rf .pytest_cache build mutants .hypothesis
