# syntax=docker/dockerfile:1
# vispipe images (docker build --target train|serve .). Both install with the
# same constraints file and scripts as CI (make setup, make horovod).
#   train: CUDA + TensorFlow 2.19, horovod built with NCCL, MPI and Gloo.
#   serve: slim CPU image for `vispipe serve`: no compilers, MPI, horovod or
#          export converters.

FROM nvidia/cuda:12.5.1-cudnn-devel-ubuntu22.04 AS train
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev g++ make cmake \
        openmpi-bin libopenmpi-dev openssh-server openssh-client \
        libnccl2 libnccl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/vispipe
COPY pyproject.toml constraints.txt README.md ./
COPY vispipe ./vispipe
COPY serving ./serving
COPY export ./export
COPY scripts ./scripts
RUN python3.11 -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install -c constraints.txt ".[gpu,serve]" \
    && HOROVOD_GPU=1 scripts/build_horovod.sh /opt/venv/bin/python \
    && /opt/venv/bin/python -m pip check
# Non-root user; sshd runs as that user for the MPI Operator's launcher.
RUN useradd --create-home --uid 1000 --shell /bin/bash vispipe \
    && printf '%s\n' 'Port 22' 'PidFile /home/vispipe/sshd.pid' \
        'HostKey /home/vispipe/.ssh/id_rsa' 'StrictModes no' \
        > /home/vispipe/.sshd_config \
    && chown vispipe:vispipe /home/vispipe/.sshd_config
USER 1000:1000
WORKDIR /home/vispipe
HEALTHCHECK --interval=60s --timeout=30s \
    CMD ["python", "-c", "import horovod.tensorflow, vispipe.train"]
ENTRYPOINT ["vispipe"]
CMD ["--help"]

FROM python:3.11-slim-bookworm AS serve
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /opt/vispipe
COPY pyproject.toml constraints.txt README.md ./
COPY vispipe ./vispipe
COPY serving ./serving
RUN python -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install -c constraints.txt ".[serve]" \
    && /opt/venv/bin/python -m pip check \
    && useradd --create-home --uid 1000 vispipe
USER 1000:1000
EXPOSE 8501 8500
HEALTHCHECK --interval=30s --timeout=5s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/healthz', timeout=3)"]
ENTRYPOINT ["vispipe"]
CMD ["serve", "--host", "0.0.0.0", "--model-base-path", "/models/model"]
