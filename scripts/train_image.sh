#!/usr/bin/env bash
# The steps the training images (Dockerfile targets `train` and `train-cpu`)
# have in common, so that the CUDA image, which cannot be built on the
# development machines, runs exactly what the tested CPU image runs.
#
#   scripts/train_image.sh pip system horovod user
#     pip      pip in /opt/venv (the serving image's venv has none)
#     system   MPI runtime and OpenSSH (apt)
#     horovod  Horovod from source, then its build tools removed again
#     user     user vispipe (uid 1000), a non-root sshd on port 2222
#
# Run as root inside the image build, with /opt/venv holding TensorFlow.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SSH_PORT=2222  # a non-root sshd cannot bind port 22
HOME_DIR=/home/vispipe

apt_install() {
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    rm -rf /var/lib/apt/lists/*
}

installed_packages() {
    dpkg-query -W -f '${Package}\n' | sort
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
    # Compilers, CMake and MPI headers only for the build: whatever this step
    # installs is purged again, so the image keeps none of it (a CUDA devel
    # base keeps its own compilers).
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
