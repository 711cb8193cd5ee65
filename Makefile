# Fresh machine: `make demo` (set up, then run the embedded default pipeline)
# and `make test` (set up, then run the tests). Both reuse an up-to-date .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-core
PYTEST_ARGS ?=

HOROVOD_STAMP := $(VENV)/.installed-horovod
NODE_STAMP := $(VENV)/.installed-node

.PHONY: setup demo test bench horovod node browser clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,serve,ui,export,tune,track,interop]"
	$(BIN)/python -m pip check
	touch $@

setup: $(STAMP)

# Horovod 0.28.1 built from its sdist with the one source change TF 2.19 needs
# (see scripts/build_horovod.sh); the distributed tests run under horovodrun.
$(HOROVOD_STAMP): $(STAMP) scripts/build_horovod.sh
	scripts/build_horovod.sh $(BIN)/python
	touch $@

horovod: $(HOROVOD_STAMP)

# npm's pure-JavaScript @tensorflow/tfjs: export verifies TF.js models in Node,
# the web UI serves it to the browser (no CDN).
$(NODE_STAMP): export/js/package-lock.json vispipe/ui/js/package-lock.json
	cd export/js && npm ci --no-audit --no-fund --loglevel=error
	bash vispipe/ui/js/install.sh
	touch $@

node: $(NODE_STAMP)

# Debian's Chromium for the browser tests (they skip, saying so, without it).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium not installed (needs root): the browser tests will skip"

demo: $(STAMP)
	$(BIN)/vispipe run pipelines/digits-demo.yaml

test: $(STAMP) $(HOROVOD_STAMP) $(NODE_STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
