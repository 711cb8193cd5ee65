#!/usr/bin/env bash
# Builds horovod 0.28.1 from its PyPI sdist into a Python environment that
# already has tensorflow, with the one source change tensorflow 2.19 needs.
#
# Why: horovod 0.28.1 (the last release) does not compile against
# tensorflow 2.19 in one file, horovod/tensorflow/xla_mpi_ops.cc: the XLA
# headers it includes need LLVM headers that the tensorflow wheel does not
# ship. Those ops only serve XLA-compiled allreduce, which vispipe does not
# use, so the file is dropped from TF_SOURCES before building.
#
# Usage: scripts/build_horovod.sh [PYTHON]   (default: .venv/bin/python)
#   HOROVOD_GPU=1 builds NCCL allreduce too (needs CUDA and NCCL headers);
#   MPI is built in when `mpicxx` is on PATH, Gloo always.
# Idempotent: exits at once when horovod with tensorflow support imports.
set -euo pipefail

PYTHON="${1:-.venv/bin/python}"
VERSION=0.28.1
PATCHED_FILE=horovod/tensorflow/xla_mpi_ops.cc
CMAKE_LISTS=horovod/tensorflow/CMakeLists.txt

if "$PYTHON" - <<'PY' 2>/dev/null
import horovod.tensorflow as hvd
import sys
sys.exit(0 if hvd.gloo_built() or hvd.mpi_built() else 1)
PY
then
    echo "horovod with tensorflow support is already installed in $PYTHON; nothing to do."
    exit 0
fi

"$PYTHON" -c "import tensorflow" || {
    echo "error: $PYTHON cannot import tensorflow; install the project first (make setup)." >&2
    exit 1
}

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
    "horovod==$VERSION" -d "$WORK"
tar -xzf "$WORK/horovod-$VERSION.tar.gz" -C "$WORK"
SRC="$WORK/horovod-$VERSION"

grep -q "$PATCHED_FILE" "$SRC/$CMAKE_LISTS" || {
    echo "error: $CMAKE_LISTS of horovod $VERSION no longer lists $PATCHED_FILE;" \
         "the patch in $0 needs updating." >&2
    exit 1
}
sed -i "\#$PATCHED_FILE#d" "$SRC/$CMAKE_LISTS"
if grep -q "$PATCHED_FILE" "$SRC/$CMAKE_LISTS"; then
    echo "error: could not drop $PATCHED_FILE from $CMAKE_LISTS." >&2
    exit 1
fi

export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1
export HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
if command -v mpicxx >/dev/null 2>&1; then
    export HOROVOD_WITH_MPI=1
else
    export HOROVOD_WITHOUT_MPI=1
fi
if [ "${HOROVOD_GPU:-0}" = 1 ]; then
    export HOROVOD_GPU_OPERATIONS=NCCL
fi
export MAKEFLAGS="-j${HOROVOD_BUILD_JOBS:-$(nproc)}"

# Its runtime dependencies (cloudpickle, psutil, pyyaml, packaging) resolve
# under the project's pins when run from the repository root.
CONSTRAINTS=()
[ -f constraints.txt ] && CONSTRAINTS=(-c constraints.txt)
"$PYTHON" -m pip install --no-build-isolation --no-cache-dir "${CONSTRAINTS[@]}" "$SRC"
"$PYTHON" - <<'PY'
import horovod.tensorflow as hvd
import horovod
print(f"horovod {horovod.__version__} built: "
      f"gloo={hvd.gloo_built()} mpi={hvd.mpi_built()} nccl={hvd.nccl_built()}")
PY
