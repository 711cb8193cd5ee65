#!/usr/bin/env bash
# Builds vispipe's images with podman (or docker, whichever is installed).
#
#   scripts/images.sh build [TARGET...]   # default: serve train-cpu (train needs CUDA bases)
#   scripts/images.sh tag TARGET          # the local tag of a target, e.g. vispipe-serve:dev
#   scripts/images.sh engine              # podman or docker; fails, saying why, with neither
#   scripts/images.sh base TARGET         # the base image a build of TARGET would use
#   scripts/images.sh horovod-wheel       # the Horovod wheel the train-cpu image is given, if any
#
# Base images: PYTHON_BASE and CUDA_BASE if set; otherwise a local image named
# localhost/<official name> when one exists (the stand-ins that
# ../shared/containers/setup-podman.sh builds where no registry is reachable),
# else the official image. Builds use host networking, and with podman the
# host's CA bundle, so that pip inside the build reaches the package registries
# the way the host does (also through a TLS-inspecting proxy).
# The train-cpu image installs the Horovod wheel in HOROVOD_WHEEL_DIR (default
# .venv/wheels, where `make horovod` leaves the one it built) when it fits it
# (Python tags, Gloo and MPI, the image's TensorFlow; the image checks), and
# compiles Horovod otherwise: about 45 minutes on 2 cores. The CUDA train image
# always compiles its own (the host's wheel has no GPU operations).
# IMAGE_TAG (default dev) names the images: vispipe-serve:dev,
# vispipe-train:dev-cpu, vispipe-train:dev-gpu.
set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(...) stops the script too
cd "$(dirname "$0")/.."

IMAGE_TAG="${IMAGE_TAG:-dev}"
DEFAULT_PYTHON_BASE=python:3.11-slim-bookworm
DEFAULT_CUDA_BASE=nvidia/cuda:12.5.1-cudnn-devel-ubuntu22.04
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
HOROVOD_VERSION=0.28.1
HOROVOD_WHEEL_DIR="${HOROVOD_WHEEL_DIR:-.venv/wheels}"

engine() {
    local name
    for name in podman docker; do
        if command -v "$name" >/dev/null 2>&1; then
            echo "$name"
            return 0
        fi
    done
    echo "no container engine: neither podman nor docker is installed" \
        "(make containers installs podman as root)" >&2
    return 1
}

tag() {
    case "$1" in
        serve) echo "vispipe-serve:$IMAGE_TAG" ;;
        train-cpu) echo "vispipe-train:$IMAGE_TAG-cpu" ;;
        train) echo "vispipe-train:$IMAGE_TAG-gpu" ;;
        *) echo "unknown target ${1@Q}: expected serve, train-cpu or train" >&2; return 2 ;;
    esac
}

# The image to build FROM: an explicit setting, a local stand-in, or the official one.
resolve_base() {
    local setting="$1" official="$2"
    if [ -n "$setting" ]; then
        echo "$setting"
    elif "$ENGINE" image inspect "localhost/$official" >/dev/null 2>&1; then
        echo "localhost/$official"
    else
        echo "$official"
    fi
}

base() {
    case "$1" in
        train) resolve_base "${CUDA_BASE:-}" "$DEFAULT_CUDA_BASE" ;;
        serve|train-cpu) resolve_base "${PYTHON_BASE:-}" "$DEFAULT_PYTHON_BASE" ;;
        *) tag "$1" ;;
    esac
}

# The Horovod wheels in HOROVOD_WHEEL_DIR, one a line (none: nothing).
horovod_wheel() {
    local wheel
    for wheel in "$HOROVOD_WHEEL_DIR"/horovod-"$HOROVOD_VERSION"-*.whl; do
        [ -f "$wheel" ] && echo "$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")"
    done
    return 0
}

# The build flags that give train-cpu the Horovod wheel, one a line: none when there is none.
horovod_wheel_flag() {
    local wheels folder list
    wheels=$(horovod_wheel)
    if [ -z "$wheels" ]; then
        echo "no Horovod $HOROVOD_VERSION wheel in $HOROVOD_WHEEL_DIR (make horovod builds one):" \
            "the image compiles Horovod" >&2
        return 0
    fi
    folder=$(cd "$HOROVOD_WHEEL_DIR" && pwd)
    echo "offering $wheels (installed when it fits, else Horovod compiles)" >&2
    echo "--build-context=horovod-wheels=$folder"
    # Keys the Horovod layer's cache on the wheels (see the Dockerfile).
    mapfile -t list <<< "$wheels"
    echo "--build-arg=HOROVOD_WHEELS_SHA256=$(sha256sum "${list[@]}" | cut -d' ' -f1 | sha256sum | cut -d' ' -f1)"
}

build() {
    local target image start size wheel_flags extra flags=(--network host)
    if [ "$ENGINE" = podman ]; then
        flags+=(--format docker)  # OCI images drop HEALTHCHECK
        [ -f "$CA_BUNDLE" ] && flags+=(--volume "$CA_BUNDLE:$CA_BUNDLE:ro")
    fi
    for target in "$@"; do
        image=$(tag "$target")
        start=$(date +%s)
        echo "building $image (target $target, base $(base "$target")) with $ENGINE" >&2
        extra=()
        if [ "$target" = train-cpu ]; then
            wheel_flags=$(horovod_wheel_flag)  # fails the build when the lookup fails
            [ -z "$wheel_flags" ] || mapfile -t extra <<< "$wheel_flags"
        fi
        "$ENGINE" build "${flags[@]}" "${extra[@]}" \
            --build-arg "PYTHON_BASE=$(base serve)" --build-arg "CUDA_BASE=$(base train)" \
            --target "$target" --tag "$image" --file Dockerfile .
        size=$("$ENGINE" image inspect --format '{{.Size}}' "$image")
        echo "built $image in $(( $(date +%s) - start )) s: $size bytes" >&2
    done
}

command="${1:-}"
[ $# -gt 0 ] && shift
case "$command" in
    engine) engine ;;
    tag) tag "$1" ;;
    base) ENGINE=$(engine); base "$1" ;;
    horovod-wheel) horovod_wheel ;;
    build) ENGINE=$(engine); if [ $# -eq 0 ]; then build serve train-cpu; else build "$@"; fi ;;
    *) echo "usage: $0 build [TARGET...] | tag TARGET | base TARGET | horovod-wheel | engine" >&2
       exit 2 ;;
esac
