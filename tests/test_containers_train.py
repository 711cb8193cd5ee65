"""The training image, run the way the training manifests in k8s/base run it.

- `Job/vispipe-train` (train-job.yaml): one container with the Job's command,
  arguments, environment, user and volume paths completes a short run.
- `MPIJob/vispipe-horovod` (mpijob.yaml): two worker containers run the
  manifest's sshd and a launcher container runs the manifest's launcher
  command, plus what the MPI Operator (v2beta1, OpenMPI) adds to the pods: its
  hostfile at /etc/mpi/hostfile, its OMPI_MCA_* variables, and its generated
  ECDSA key pair at `sshAuthMountPath`. Stand-ins for the cluster network
  (tests/k8s_podman.py): the worker pods' DNS names lead to their sshd on
  distinct loopback ports (an ssh_config file), and OpenMPI keeps to loopback.
  Worker 1's volume is mounted read-only, so a finished run shows that rank 1
  wrote nothing.

Both build the Dockerfile's `train-cpu` target and train LeNet on a real MNIST
subset. The image installs the Horovod wheel `make horovod` built (with MPI)
instead of compiling Horovod, and the first test checks that it did. They skip,
saying why, without podman/docker or base images, and in `make test` when there
is no such wheel (compiling Horovod in the image takes about 45 minutes on 2
cores; `make image-test` builds it anyway). Cost on the shared 2-core machine:
the build 4.5 minutes after serve's built the shared TensorFlow stage (the
train extra's wheels downloaded, the Horovod wheel installed), at load average
11; the three tests 2.5 minutes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
import zipfile

import pytest
import yaml

from conftest import extract_subset
from k8s_podman import (Volumes, build_image, find, horovod_wheel, host_path,
                        run_container, run_once, wait_for)
from ports import free_ports
from vispipe.cli import main
from vispipe.deploy import render
from vispipe.train.run_folder import RunFolder

CLAIM = "vispipe-data"
NAMESPACE = "default"
JOB_TIMEOUT_S = 900
RANK_PROBE = ("for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < \"$f\" 2>/dev/null "
              "| grep '^OMPI_COMM_WORLD_RANK='; done | sort -u")


@pytest.fixture(scope="module")
def train_image():
    return build_image("train-cpu")


@pytest.fixture(scope="module")
def mnist_dataset(mnist_archive, tmp_path_factory) -> str:
    """400 MNIST digits (320 train, 80 val) as a vispipe dataset."""
    root = tmp_path_factory.mktemp("mnist-containers")
    extract_subset(mnist_archive, str(root), per_class=40, splits=("train",))
    out = root / "ds"
    assert main(["dataset", "create", "--source", str(root / "mnist-png" / "train"),
                 "--out", str(out), "--size", "28x28", "--channels", "1",
                 "--val-percent", "20", "--quiet"]) == 0
    return str(out)


def _cluster(tmp_path, image: str, dataset: str, epochs: int) -> tuple[list, Volumes]:
    """The manifests rendered for a short pipeline, and a shared volume holding the dataset."""
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "name": "mnist", "model": {"name": "lenet"},
        "train": {"epochs": epochs, "batch_size": 32, "optimizer": "sgd", "momentum": 0.9,
                  "lr": {"policy": "fixed", "base_lr": 0.01}, "mixed_precision": "off"}}))
    docs = render(str(pipeline), overlay="cpu", workers=2, image=image)
    volumes = Volumes(claims={CLAIM: str(tmp_path / "pvc")}, docs=docs,
                      work_dir=str(tmp_path / "volumes"))
    os.makedirs(volumes.work_dir)
    return docs, volumes


def _env(pod: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["containers"][0].get("env", [])}


def test_the_image_holds_the_horovod_wheel_it_was_given(train_image):
    """`make horovod`'s wheel is installed as built: the image did not compile its own."""
    given = horovod_wheel()
    if given is None:
        pytest.skip("no Horovod wheel with MPI was given: the image compiled Horovod")
    wheel, library = given
    with zipfile.ZipFile(wheel) as archive:
        expected = hashlib.sha256(archive.read(library)).hexdigest()
    script = ("import hashlib, os, horovod; print(hashlib.sha256(open(os.path.join("
              f"os.path.dirname(horovod.__path__[0]), {library!r}), 'rb').read()).hexdigest())")
    result = run_once(train_image.tag, "-c", script, entrypoint="python", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == expected


def test_the_training_job_completes_a_short_run(train_image, mnist_dataset, tmp_path):
    docs, volumes = _cluster(tmp_path, train_image.tag, mnist_dataset, epochs=2)
    pod = find(docs, "Job", "vispipe-train")["spec"]["template"]["spec"]
    env = _env(pod)
    shutil.copytree(mnist_dataset, host_path(pod, volumes, env["VISPIPE_DATASET_DIR"]))
    job = run_container(pod, train_image.tag, volumes, role="train-job")
    try:
        code = job.wait(JOB_TIMEOUT_S)
        assert code == 0, job.logs()
    finally:
        job.remove()
    run = RunFolder(host_path(pod, volumes, env["VISPIPE_RUN_DIR"]))
    info = run.read_run_info()
    assert info.status == "completed" and info.epochs_completed == 2
    assert os.path.isfile(run.model_path)
    assert os.stat(run.info_path).st_uid == pod["securityContext"]["runAsUser"]
    assert os.path.isdir(host_path(pod, volumes, env["VISPIPE_HOME"]))  # the registry


class MPIJob:
    """An MPIJob's pods as containers, with what the MPI Operator gives them."""

    def __init__(self, docs: list, volumes: Volumes, image: str, work_dir):
        mpijob = find(docs, "MPIJob", "vispipe-horovod")
        self.name = mpijob["metadata"]["name"]
        self.spec = mpijob["spec"]
        self.image, self.volumes = image, volumes
        self.launcher_pod = self.spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
        self.worker_pod = self.spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
        replicas = self.spec["mpiReplicaSpecs"]["Worker"]["replicas"]
        self.hosts = [f"{self.name}-worker-{i}" for i in range(replicas)]
        self.ports = free_ports(replicas)
        self.workers: list = [None] * replicas
        self._write_operator_files(work_dir)

    def _write_operator_files(self, work_dir) -> None:
        """The operator's Secret, hostfile, and the stand-in for the cluster's DNS."""
        ssh, etc_mpi = work_dir / "ssh", work_dir / "etc-mpi"
        ssh.mkdir()
        etc_mpi.mkdir()
        # The operator's Secret: an ECDSA P-521 key in PEM, as id_rsa/id_rsa.pub/authorized_keys.
        subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "521", "-m", "PEM", "-N", "",
                        "-f", str(ssh / "id_rsa")], check=True)
        shutil.copy(ssh / "id_rsa.pub", ssh / "authorized_keys")
        for key in ssh.iterdir():
            key.chmod(0o644)  # a Secret volume's default mode; the files are root's
        slots = self.spec.get("slotsPerWorker", 1)
        service = f"{self.name}-worker"
        (etc_mpi / "hostfile").write_text("".join(
            f"{host}.{service}.{NAMESPACE}.svc slots={slots}\n" for host in self.hosts))
        # Cluster DNS stand-in: each worker pod's name leads to its sshd on loopback.
        dns = work_dir / "cluster-dns.conf"
        dns.write_text("".join(
            f"Host {host}.{service}.{NAMESPACE}.svc {host}.{service} {host}\n"
            f"    HostName 127.0.0.1\n    Port {port}\n"
            for host, port in zip(self.hosts, self.ports)))
        # Every pod: the key and the names; the launcher also the hostfile.
        self.ssh_mounts = [(str(ssh), self.spec["sshAuthMountPath"]),
                           (str(dns), "/etc/ssh/ssh_config.d/00-cluster-dns.conf")]
        self.etc_mpi = str(etc_mpi)

    def start_worker(self, index: int):
        # Rank `index` runs here; only rank 0 may write the shared volume.
        worker = run_container(
            self.worker_pod, self.image, self.volumes, role=f"worker{index}",
            hostname=self.hosts[index], env={"K_MPI_JOB_ROLE": "worker"},
            read_only_claims=index > 0, extra_mounts=self.ssh_mounts,
            extra_args=["-o", f"Port={self.ports[index]}", "-o", "ListenAddress=127.0.0.1"])
        self.workers[index] = worker

        def listening() -> bool:
            assert worker.running(), worker.logs()
            try:
                socket.create_connection(("127.0.0.1", self.ports[index]), timeout=2).close()
                return True
            except OSError:
                return False

        wait_for(listening, 60, f"sshd of {self.hosts[index]}")
        return worker

    def start_launcher(self):
        operator_env = {
            "K_MPI_JOB_ROLE": "launcher",
            "OMPI_MCA_orte_keep_fqdn_hostnames": "true",
            "OMPI_MCA_orte_default_hostfile": "/etc/mpi/hostfile",
            "OMPI_MCA_plm_rsh_args": "-o ConnectionAttempts=10",
            "OMPI_MCA_orte_set_default_slots": str(self.spec.get("slotsPerWorker", 1)),
            "NVIDIA_VISIBLE_DEVICES": "", "NVIDIA_DRIVER_CAPABILITIES": "",
            # Network stand-in: the pods' network is loopback here.
            "OMPI_MCA_oob_tcp_if_include": "lo", "OMPI_MCA_btl_tcp_if_include": "lo",
        }
        return run_container(
            self.launcher_pod, self.image, self.volumes, role="launcher",
            hostname=f"{self.name}-launcher", env=operator_env,
            extra_mounts=self.ssh_mounts + [(self.etc_mpi, "/etc/mpi")])

    def ranks_in(self, container) -> set[str]:
        result = container.exec("sh", "-c", RANK_PROBE)
        return {line.partition("=")[2] for line in result.stdout.split()}

    def remove(self):
        for worker in self.workers:
            if worker is not None:
                worker.remove()


def test_the_mpijob_trains_across_containers_survives_a_lost_worker_and_resumes(
    train_image, mnist_dataset, tmp_path
):
    epochs = 4  # worker 1 is killed at the first checkpoint: epochs 2-4 are left to resume
    docs, volumes = _cluster(tmp_path, train_image.tag, mnist_dataset, epochs=epochs)
    job = MPIJob(docs, volumes, train_image.tag, tmp_path)
    env = _env(job.launcher_pod)
    shutil.copytree(mnist_dataset,
                    host_path(job.launcher_pod, volumes, env["VISPIPE_DATASET_DIR"]))
    run = RunFolder(host_path(job.launcher_pod, volumes, env["VISPIPE_RUN_DIR"]))
    launchers = []
    try:
        for index in range(len(job.hosts)):
            job.start_worker(index)
        launchers.append(job.start_launcher())

        # One rank in each worker container, none in the launcher's.
        def placed():
            assert launchers[0].running() or run.latest_checkpoint(), launchers[0].logs()
            return [job.ranks_in(w) for w in job.workers] == [{"0"}, {"1"}]

        wait_for(placed, 300, "a rank in each worker container")
        assert job.ranks_in(launchers[0]) == set()

        # A lost worker pod fails the whole job: mpirun ends with an error and
        # no rank is left training.
        def checkpointed():
            assert launchers[0].running(), launchers[0].logs()
            return run.latest_checkpoint()

        wait_for(checkpointed, JOB_TIMEOUT_S, "rank 0's first checkpoint")
        job.workers[1].kill("KILL")
        killed = time.monotonic()
        code = launchers[0].wait(300)
        assert code != 0, launchers[0].logs()
        print(f"\n[mpijob] worker 1 killed after epoch {run.latest_checkpoint().epoch}: "
              f"launcher exited {code} {time.monotonic() - killed:.1f} s later")
        wait_for(lambda: job.ranks_in(job.workers[0]) == set(), 60,
                 "rank 0 to end with the job")
        assert run.read_run_info().status != "completed"
        killed_at = run.latest_checkpoint().epoch
        assert killed_at < epochs

        # The operator's recovery: the worker pod again, a new launcher; the
        # manifest's command sees run.json and resumes.
        job.workers[1].remove()
        job.start_worker(1)
        launchers.append(job.start_launcher())
        code = launchers[1].wait(JOB_TIMEOUT_S)
        logs = launchers[1].logs(tail=2000)
        assert code == 0, logs
        print(f"[mpijob] resumed at epoch {killed_at + 1} in a new launcher, finished "
              f"{time.monotonic() - launchers[1].started_at:.0f} s after it started")
        assert f"at epoch {killed_at + 1}/{epochs}" in logs, logs[-3000:]
    finally:
        for launcher in launchers:
            launcher.remove()
        job.remove()
    info = run.read_run_info()
    assert info.status == "completed" and info.epochs_completed == epochs
    assert info.distributed["mode"] == "horovod" and info.distributed["size"] == 2
    digests = info.distributed["weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert [r["epoch"] for r in run.read_metrics("epoch")] == list(range(1, epochs + 1))
