# Fresh machine: `make demo` (set up, then run the embedded default pipeline)
# and `make test` (set up, then run the tests). Both reuse an up-to-date .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-core
PYTEST_ARGS ?=
# Two test processes, each taking whole files (slow files first: tests/conftest.py);
# TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

HOROVOD_STAMP := $(VENV)/.installed-horovod
NODE_STAMP := $(VENV)/.installed-node

SHARED ?= ../shared
CONTAINER_TESTS := tests/test_containers_serve.py tests/test_containers_train.py

.PHONY: setup demo test bench horovod node browser containers images image-test clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all,dev]"
	$(BIN)/python -m pip check
	touch $@

setup: $(STAMP)

# Horovod 0.28.1 built from its sdist with the one source change TF 2.19 needs
# (see scripts/build_horovod.sh); the distributed tests run under horovodrun.
# With Gloo and, where OpenMPI's headers are (installed as root, as Chromium
# is), MPI: its wheel, left in $(VENV)/wheels, is what the train-cpu image
# installs instead of compiling Horovod again (scripts/images.sh).
$(HOROVOD_STAMP): $(STAMP) scripts/build_horovod.sh
	@command -v mpicxx >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			libopenmpi-dev openmpi-bin >/dev/null; } || \
		echo "could not install OpenMPI's headers (needs root and apt): Horovod is built" \
			"without MPI, so the train-cpu image would compile its own and its tests skip" \
			"in make test; after installing them, make -B horovod rebuilds it"
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

# podman for the container tests (as root, like Chromium): $(SHARED)/containers/
# setup-podman.sh where it exists (it also builds local stand-ins for the base
# images where no registry is reachable), else Debian's podman. Without one
# the container tests skip, saying why.
containers:
	@if [ "$$(id -u)" = 0 ] && [ -f $(SHARED)/containers/setup-podman.sh ]; then \
		bash $(SHARED)/containers/setup-podman.sh >/dev/null || \
		echo "podman set-up failed: the container tests will skip"; \
	elif ! scripts/images.sh engine >/dev/null 2>&1; then \
		{ [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		  apt-get install -y -qq podman runc >/dev/null; } || \
		echo "no container engine (installing podman needs root): the container tests will skip"; \
	fi

# serve and train-cpu (train needs the CUDA base: make images TARGETS=train).
TARGETS ?= serve train-cpu
images:
	scripts/images.sh build $(TARGETS)

# Builds (cached layers: quick when nothing changed) and runs the images; `make
# test` runs the same tests. Here train-cpu is built even without a Horovod
# wheel to give it (compiling Horovod: about 45 minutes on 2 cores).
image-test: $(STAMP) containers
	VISPIPE_BUILD_ALL_IMAGES=1 $(BIN)/python -m pytest $(CONTAINER_TESTS) $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/vispipe run pipelines/digits-demo.yaml

test: $(STAMP) $(HOROVOD_STAMP) $(NODE_STAMP) browser containers
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
