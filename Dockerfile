# syntax=docker/dockerfile:1
# vispipe's images. `make images` builds the CPU ones with podman or docker;
# `make image-test` runs them the way the Kubernetes manifests in k8s/ do.
#   serve      `vispipe serve`: CPU TensorFlow, the server and TF Serving's
#              protos; no training, dataset, plotting or export libraries.
#   train-cpu  the train extra, Horovod with Gloo and MPI, and sshd for the
#              MPI Operator's launcher (k8s/base/mpijob.yaml).
#   train      the same on CUDA, Horovod with NCCL too. After Python and
#              TensorFlow, every step is train-cpu's (scripts/train_image.sh).
# The base images are build arguments whose defaults are the official images,
# so a mirror or a local copy can stand in, e.g.
#   podman build --build-arg PYTHON_BASE=mirror.example/python:3.11-slim-bookworm --target serve .

ARG PYTHON_BASE=python:3.11-slim-bookworm
ARG CUDA_BASE=nvidia/cuda:12.5.1-cudnn-devel-ubuntu22.04
# TensorFlow's wheel declares these, but loading and running a SavedModel uses
# none of them (tensorflow-io-gcs-filesystem only with TF_USE_MODULAR_FILESYSTEM;
# TensorFlow reads gs:// itself). train-cpu installs what it needs.
ARG SERVE_LEAVES_OUT=keras,tensorboard,h5py,libclang,tensorflow-io-gcs-filesystem,setuptools,wheel

# ---- Horovod wheels for the training images (none by default) ------------
# Empty: the training images compile Horovod (about 45 minutes on 2 cores).
# A build given a folder holding a Horovod wheel as the build context of this
# name installs that wheel instead when it fits the image (its Python tags,
# Gloo and MPI, loads against the image's TensorFlow), e.g. the one
# `make horovod` built:  --build-context horovod-wheels=.venv/wheels
# (scripts/images.sh does this).
FROM scratch AS horovod-wheels

# ---- CPU TensorFlow in /opt/venv (shared by serve and train-cpu) ----------
# The wheels install_deps.py downloads stay in a build cache, so TensorFlow's
# is fetched once for all images; pip keeps no cache of its own in a layer.
FROM ${PYTHON_BASE} AS cpu-tensorflow
ARG SERVE_LEAVES_OUT
ARG PIP_NO_CACHE_DIR=1
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /opt/vispipe
COPY pyproject.toml constraints.txt ./
COPY scripts/install_deps.py scripts/
# No pip in the venv: the base image's pip installs into it.
RUN --mount=type=cache,target=/var/cache/vispipe-wheels,sharing=locked \
    python -m venv --without-pip /opt/venv \
    && python scripts/install_deps.py --wheel-dir /var/cache/vispipe-wheels \
        --python /opt/venv/bin/python --without "$SERVE_LEAVES_OUT"

# ---- serve ------------------------------------------------------------------
FROM cpu-tensorflow AS serve
ARG SERVE_LEAVES_OUT
ARG PIP_NO_CACHE_DIR=1
RUN --mount=type=cache,target=/var/cache/vispipe-wheels,sharing=locked \
    python scripts/install_deps.py --wheel-dir /var/cache/vispipe-wheels \
        --python /opt/venv/bin/python --extras serve --without "$SERVE_LEAVES_OUT"
COPY README.md ./
COPY vispipe/ vispipe/
COPY export/ export/
COPY serving/ serving/
COPY scripts/serve_entrypoint.sh /usr/local/bin/vispipe-serve
COPY scripts/serve_healthcheck.py /usr/local/bin/vispipe-healthcheck
RUN python -m pip --python /opt/venv/bin/python install --quiet --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info \
    && useradd --create-home --uid 1000 --user-group vispipe
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    VISPIPE_SERVE_HOST=0.0.0.0
USER 1000:1000
WORKDIR /home/vispipe
EXPOSE 8500 8501
# Healthy once every model is loaded: GET /readyz on the ports the server
# listens on (found from its sockets, whatever its flags say).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/bin/vispipe-healthcheck"]
# TF Serving's command line (or `serve ...`, vispipe's verb); see the script.
ENTRYPOINT ["vispipe-serve"]
# As the official image: the model "model" from /models/model, REST on 8501, gRPC on 8500.
CMD ["--port=8500", "--rest_api_port=8501", "--model_name=model", "--model_base_path=/models/model"]

# ---- train-cpu --------------------------------------------------------------
FROM cpu-tensorflow AS train-cpu
ARG PIP_NO_CACHE_DIR=1
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
COPY scripts/train_image.sh scripts/build_horovod.sh scripts/
RUN --mount=type=cache,target=/var/cache/vispipe-wheels,sharing=locked \
    scripts/train_image.sh pip system \
    && python scripts/install_deps.py --wheel-dir /var/cache/vispipe-wheels --extras train
# Its own layer (horovod.tensorflow imports Keras, so it comes after the train
# extra): the longest step when Horovod compiles, rebuilt only when the
# dependencies or the offered wheels change. A bind mount's content is not part
# of the layer cache's key, so the build names the wheels by their SHA-256
# (scripts/images.sh): a new wheel is installed, not an old layer reused.
ARG HOROVOD_WHEELS_SHA256=none
# hadolint ignore=DL3059
RUN --mount=type=bind,from=horovod-wheels,target=/tmp/horovod-wheels \
    scripts/train_image.sh horovod user
COPY README.md ./
COPY vispipe/ vispipe/
COPY export/ export/
COPY serving/ serving/
RUN pip install --quiet --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info
USER 1000:1000
WORKDIR /home/vispipe
# Batch jobs and sshd workers: Kubernetes watches the process, nothing to probe.
HEALTHCHECK NONE
ENTRYPOINT ["vispipe"]
CMD ["--help"]

# ---- train (CUDA) -------------------------------------------------------------
FROM ${CUDA_BASE} AS train
ARG PIP_NO_CACHE_DIR=1
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOROVOD_GPU=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /opt/vispipe
# Ubuntu 22.04 has no Python 3.11: deadsnakes'; NCCL for Horovod's allreduce.
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev libnccl2 libnccl-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
COPY pyproject.toml constraints.txt ./
COPY scripts/install_deps.py scripts/
RUN --mount=type=cache,target=/var/cache/vispipe-wheels,sharing=locked \
    python scripts/install_deps.py --wheel-dir /var/cache/vispipe-wheels --extras gpu
COPY scripts/train_image.sh scripts/build_horovod.sh scripts/
RUN --mount=type=cache,target=/var/cache/vispipe-wheels,sharing=locked \
    scripts/train_image.sh pip system \
    && python scripts/install_deps.py --wheel-dir /var/cache/vispipe-wheels --extras train
# Its own layer (horovod.tensorflow imports Keras, so it comes after the train
# extra): the longest step when Horovod compiles, rebuilt only when the
# dependencies or the offered wheels change. A bind mount's content is not part
# of the layer cache's key, so the build names the wheels by their SHA-256
# (scripts/images.sh): a new wheel is installed, not an old layer reused.
ARG HOROVOD_WHEELS_SHA256=none
# hadolint ignore=DL3059
RUN --mount=type=bind,from=horovod-wheels,target=/tmp/horovod-wheels \
    scripts/train_image.sh horovod user
COPY README.md ./
COPY vispipe/ vispipe/
COPY export/ export/
COPY serving/ serving/
RUN pip install --quiet --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info
USER 1000:1000
WORKDIR /home/vispipe
# Batch jobs and sshd workers: Kubernetes watches the process, nothing to probe.
HEALTHCHECK NONE
ENTRYPOINT ["vispipe"]
CMD ["--help"]
