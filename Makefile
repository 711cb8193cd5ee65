# Fresh machine: `make demo` (set up, then run the embedded default pipeline)
# and `make test` (set up, then run the tests). Both reuse an up-to-date .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-core
PYTEST_ARGS ?=

HOROVOD_STAMP := $(VENV)/.installed-horovod

.PHONY: setup demo test bench horovod clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,serve,ui]"
	$(BIN)/python -m pip check
	touch $@

setup: $(STAMP)

# Horovod 0.28.1 built from its sdist with the one source change TF 2.19 needs
# (see scripts/build_horovod.sh); the distributed tests run under horovodrun.
$(HOROVOD_STAMP): $(STAMP) scripts/build_horovod.sh
	scripts/build_horovod.sh $(BIN)/python
	touch $@

horovod: $(HOROVOD_STAMP)

demo: $(STAMP)
	$(BIN)/vispipe run pipelines/digits-demo.yaml

test: $(STAMP) $(HOROVOD_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
