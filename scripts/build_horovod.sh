#!/usr/bin/env bash
# Builds a wheel of horovod 0.28.1 from its PyPI sdist for a Python environment
# that already has tensorflow, with the one source change tensorflow 2.19
# needs, and installs it.
#
# Why: horovod 0.28.1 (the last release) does not compile against
# tensorflow 2.19 in one file, horovod/tensorflow/xla_mpi_ops.cc: the XLA
# headers it includes need LLVM headers that the tensorflow wheel does not
# ship. Those ops only serve XLA-compiled allreduce, which vispipe does not
# use, so the file is dropped from TF_SOURCES before building.
#
# Usage: scripts/build_horovod.sh [--wheel-only] [PYTHON]   (default: .venv/bin/python)
#   Gloo is always built in, MPI when `mpicxx` is on PATH or HOROVOD_WITH_MPI=1,
#   NCCL allreduce with HOROVOD_GPU=1 (needs CUDA and NCCL headers).
#   HOROVOD_WHEEL_DIR (default: the environment's wheels/, e.g. .venv/wheels)
#   keeps the wheel. A wheel already there is installed instead of compiling
#   when it fits: this Python's tags, every feature above, and it loads
#   against the installed tensorflow. That is how the training images reuse
#   the wheel `make horovod` built (scripts/images.sh); one that does not fit
#   is compiled again, or with --wheel-only the script exits with status 3.
# Idempotent: exits at once when horovod with those features imports and its
# wheel is in the wheel folder.
set -euo pipefail

WHEEL_ONLY=0
if [ "${1:-}" = --wheel-only ]; then
    WHEEL_ONLY=1
    shift
fi
PYTHON="${1:-.venv/bin/python}"
VERSION=0.28.1
PATCHED_FILE=horovod/tensorflow/xla_mpi_ops.cc
CMAKE_LISTS=horovod/tensorflow/CMakeLists.txt

"$PYTHON" -c "import tensorflow" 2>/dev/null || {
    echo "error: $PYTHON cannot import tensorflow; install the project first (make setup)." >&2
    exit 1
}
WHEEL_DIR="${HOROVOD_WHEEL_DIR:-$("$PYTHON" -c 'import sys; print(sys.prefix)')/wheels}"
NEEDED=(gloo)
if [ "${HOROVOD_WITH_MPI:-0}" = 1 ] || command -v mpicxx >/dev/null 2>&1; then
    NEEDED+=(mpi)
fi
[ "${HOROVOD_GPU:-0}" = 1 ] && NEEDED+=(nccl)
# Its runtime dependencies (cloudpickle, psutil, pyyaml, packaging) resolve
# under the project's pins when run from the repository root.
CONSTRAINTS=()
[ -f constraints.txt ] && CONSTRAINTS=(-c constraints.txt)

# Succeeds when horovod.tensorflow imports in $PYTHON with every needed feature.
# With `explain` (a wheel was just installed) it says on stderr why not; the
# Python's own stderr (TensorFlow's logging) is dropped.
has_horovod() {
    "$PYTHON" - "${1:-quiet}" "${NEEDED[@]}" <<'PY' >&2 2>/dev/null
import sys

explain, needed = sys.argv[1] == "explain", sys.argv[2:]
try:
    import horovod.tensorflow as hvd
except Exception as error:  # ImportError, or a library that fails to load
    if explain:
        print(f"horovod.tensorflow does not import: {error!r}")
    sys.exit(1)
missing = [name for name in needed if not getattr(hvd, f"{name}_built")()]
if missing and explain:
    print(f"horovod is built without {', '.join(missing)}")
sys.exit(1 if missing else 0)
PY
}

# Prints the horovod $VERSION wheel in $WHEEL_DIR whose tags $PYTHON supports, if
# any (with packaging, a dependency of tensorflow); a malformed name is skipped.
fitting_wheel() {
    "$PYTHON" - "$WHEEL_DIR" "$VERSION" <<'PY'
import pathlib
import sys

from packaging.tags import sys_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

folder, version = pathlib.Path(sys.argv[1]), sys.argv[2]
supported = set(sys_tags())
for path in sorted(folder.glob(f"horovod-{version}-*.whl")):
    try:
        tags = parse_wheel_filename(path.name)[3]
    except InvalidWheelFilename as error:
        print(f"skipping {path}: {error}", file=sys.stderr)
        continue
    if supported & set(tags):
        print(path)
        break
PY
}

# Installs a horovod wheel over any installed horovod (also one in the system
# site-packages a venv sees), then its dependencies.
install_wheel() {
    "$PYTHON" -m pip install --quiet --no-cache-dir --no-deps --force-reinstall "$1"
    "$PYTHON" -m pip install --quiet --no-cache-dir "${CONSTRAINTS[@]}" "$1"
}

report() {
    "$PYTHON" - <<'PY'
import horovod
import horovod.tensorflow as hvd
print(f"horovod {horovod.__version__} built: "
      f"gloo={hvd.gloo_built()} mpi={hvd.mpi_built()} nccl={hvd.nccl_built()}")
PY
}

wheel=$(fitting_wheel)
if [ -n "$wheel" ] && has_horovod; then
    echo "horovod (${NEEDED[*]}) is already installed in $PYTHON, its wheel in $WHEEL_DIR; nothing to do."
    exit 0
fi
if [ -n "$wheel" ]; then
    install_wheel "$wheel"
    if has_horovod explain; then
        echo "installed $wheel"
        report
        exit 0
    fi
    echo "$wheel lacks one of (${NEEDED[*]}) or does not load against this tensorflow;" \
         "compiling horovod instead." >&2
    "$PYTHON" -m pip uninstall --quiet --yes horovod
fi
if [ "$WHEEL_ONLY" = 1 ]; then
    echo "no horovod $VERSION wheel with (${NEEDED[*]}) for $PYTHON in $WHEEL_DIR." >&2
    exit 3
fi

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
if [[ " ${NEEDED[*]} " == *" mpi "* ]]; then
    export HOROVOD_WITH_MPI=1
else
    export HOROVOD_WITHOUT_MPI=1
fi
if [ "${HOROVOD_GPU:-0}" = 1 ]; then
    export HOROVOD_GPU_OPERATIONS=NCCL
fi
export MAKEFLAGS="-j${HOROVOD_BUILD_JOBS:-$(nproc)}"

"$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation --no-cache-dir \
    --wheel-dir "$WORK/wheel" "$SRC"
mkdir -p "$WHEEL_DIR"
wheel="$WHEEL_DIR/$(basename "$WORK"/wheel/horovod-*.whl)"
mv "$WORK"/wheel/horovod-*.whl "$wheel"
install_wheel "$wheel"
has_horovod || {
    echo "error: the horovod built into $wheel lacks one of (${NEEDED[*]})." >&2
    exit 1
}
echo "built $wheel"
report
