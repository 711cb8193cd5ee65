#!/usr/bin/env bash
# The steps the training images (Dockerfile targets `train` and `train-cpu`)
# have in common, so that the CUDA image, which cannot be built on the
# development machines, runs exactly what the tested CPU image runs.
#
#   scripts/train_image.sh pip system horovod user
#     pip      pip in /opt/venv (the serving image's venv has none)
#     system   MPI runtime and OpenSSH (apt)
#     horovod  Horovod: a wheel the build was given when one fits, else
#              compiled from source and its build tools removed again
#     user     user vispipe (uid 1000), a non-root sshd on port 2222
#
# Run as root inside the image build, with /opt/venv holding TensorFlow.
# WHEELS (default /tmp/horovod-wheels) is where the build mounts the Horovod
# wheels it is given (scripts/images.sh: the one `make horovod` built).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SSH_PORT=2222  # a non-root sshd cannot bind port 22
HOME_DIR=/home/vispipe
WHEELS="${WHEELS:-/tmp/horovod-wheels}"

apt_install() {
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    rm -rf /var/lib/apt/lists/*
}

installed_packages() {
    dpkg-query -W -f '${Package}\n' | sort
}

# Horovod from source. Compilers, CMake and MPI headers only for the build:
# whatever this installs is purged again, so the image keeps none of it (a
# CUDA devel base keeps its own compilers).
compile_horovod() {
    local before new build_deps include
    before=$(installed_packages)
    build_deps=(g++ make cmake libopenmpi-dev)
    include=$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    if [ ! -f "$include/Python.h" ]; then
        # A base whose Python comes from the distribution: its headers.
        build_deps+=("python$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')-dev")
    fi
    apt_install "${build_deps[@]}"
    HOROVOD_BUILD_JOBS=$(nproc) scripts/build_horovod.sh python
    new=$(comm -13 <(echo "$before") <(installed_packages))
    # shellcheck disable=SC2086  # one package name per word
    apt-get purge -y -qq --auto-remove $new >/dev/null
}

step() {
case "$1" in
pip)
    python -m ensurepip --default-pip
    ;;
system)
    # mpirun/orted and the launcher's ssh to the workers; MPI and Gloo
    # traffic needs nothing else.
    apt_install openmpi-bin openssh-server openssh-client
    ;;
horovod)
    # Gloo and MPI both (the MPI Operator's launcher runs mpirun).
    export HOROVOD_WITH_MPI=1 HOROVOD_WHEEL_DIR
    HOROVOD_WHEEL_DIR=$(mktemp -d)
    find "$WHEELS" -maxdepth 1 -name 'horovod-*.whl' -exec cp {} "$HOROVOD_WHEEL_DIR" \; \
        2>/dev/null || true
    scripts/build_horovod.sh --wheel-only python || compile_horovod
    rm -rf "$HOROVOD_WHEEL_DIR"
    python - <<'PY'
import horovod.tensorflow as hvd
assert hvd.mpi_built() and hvd.gloo_built(), "horovod needs both MPI and Gloo here"
PY
    ;;
user)
    useradd --create-home --uid 1000 --user-group --shell /bin/bash vispipe
    # The MPI Operator mounts its generated key pair at sshAuthMountPath
    # (/home/vispipe/.ssh: id_rsa, id_rsa.pub, authorized_keys; read-only):
    # the workers' sshd uses that key as its host key, and the launcher's ssh
    # accepts it without a known_hosts file, which it could not write.
    printf '%s\n' "Port $SSH_PORT" "PidFile /tmp/sshd.pid" "HostKey $HOME_DIR/.ssh/id_rsa" \
        "StrictModes no" "PasswordAuthentication no" "KbdInteractiveAuthentication no" \
        "PermitUserEnvironment no" "AllowUsers vispipe" > "$HOME_DIR/.sshd_config"
    printf '%s\n' "Host *" "    Port $SSH_PORT" "    StrictHostKeyChecking no" \
        "    UserKnownHostsFile /dev/null" "    LogLevel ERROR" > /etc/ssh/ssh_config.d/vispipe.conf
    mkdir -p /run/sshd
    chown vispipe:vispipe "$HOME_DIR/.sshd_config"
    ;;
*)
    echo "usage: $0 STEP... (steps: pip system horovod user), got ${1@Q}" >&2
    exit 2
    ;;
esac
}

[ $# -gt 0 ] || step ""
for name in "$@"; do
    step "$name"
done
