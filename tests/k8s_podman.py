"""Runs the containers of vispipe's Kubernetes manifests with podman, as a kubelet would.

The container tests read command, arguments, environment, volume paths and
security settings from the rendered manifests (`vispipe.deploy.render`), so
test and manifest cannot drift apart. What a cluster provides is stood in for:

- a PersistentVolumeClaim is a host folder (`subPath` a folder in it), a
  ConfigMap or Secret a folder of its files (read-only), an emptyDir a tmpfs;
- the pod's `fsGroup` gives the volume's files that group, writable and
  setgid, and the container that supplementary group, as the kubelet does;
  without one, a volume stays root's (a fresh volume on many clusters);
- `runAsUser`/`runAsGroup`, `readOnlyRootFilesystem`, dropped capabilities,
  `allowPrivilegeEscalation: false` and resource limits map to podman's flags;
- the network: containers share the host's network (never a bridge network),
  so each containerPort is remapped to a free loopback port (`ports`), and a
  `0.0.0.0` in the command line becomes `127.0.0.1`: nothing listens beyond
  loopback.

Images are built with `scripts/images.sh` (what `make images` runs).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
import zipfile
from typing import Any, Callable

import pytest
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from conftest import REPO_ROOT

__all__ = [
    "BuiltImage", "Container", "ENGINE", "Volumes", "base_image", "build_image", "find",
    "horovod_wheel", "host_path", "image_size", "run_container", "run_once", "skip_reason",
    "wait_for",
]

ENGINE = shutil.which("podman") or shutil.which("docker") or ""
IMAGES_SH = os.path.join(REPO_ROOT, "scripts", "images.sh")
IMAGE_PYTHON_TAG = "cp311"  # the images' Python, 3.11 (the Dockerfile's PYTHON_BASE)
BUILD_TIMEOUT_S = 3600
# One build at a time per checkout: serve and train-cpu share the CPU
# TensorFlow stage, which two test processes building at once would both build.
BUILD_LOCK = os.path.join(tempfile.gettempdir(), "vispipe-images-"
                          + hashlib.sha256(REPO_ROOT.encode()).hexdigest()[:12] + ".lock")
_built: dict[str, "BuiltImage"] = {}
_skip: dict[str, str | None] = {}


@dataclasses.dataclass(frozen=True)
class BuiltImage:
    """A freshly built image: tag, build wall time (cached layers count) and size."""

    tag: str
    build_s: float
    size_bytes: int


def _engine(*args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout,
                          check=check)


def _images_sh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([IMAGES_SH, *args], capture_output=True, text=True, timeout=timeout)


def base_image(target: str) -> str:
    """The base image a build of `target` uses here (scripts/images.sh's choice)."""
    return _images_sh("base", target).stdout.strip()


def image_size(tag: str) -> int:
    """An image's size in bytes, as the engine reports it."""
    return int(_engine("image", "inspect", "--format", "{{.Size}}", tag, check=True).stdout)


def run_once(image: str, *args: str, entrypoint: str | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs a command in a throwaway container without any network."""
    flags = ["--entrypoint", entrypoint] if entrypoint else []
    return _engine("run", "--rm", "--network", "none", *flags, image, *args, timeout=timeout)


def _for_image_python(wheel: str) -> bool:
    """Whether a wheel's file name has a tag for the images' CPython 3.11."""
    try:
        tags = parse_wheel_filename(os.path.basename(wheel))[3]
    except InvalidWheelFilename:
        return False
    return any(tag.interpreter == IMAGE_PYTHON_TAG for tag in tags)


def horovod_wheel() -> tuple[str, str] | None:
    """The Horovod wheel with MPI for Python 3.11 that scripts/images.sh gives train-cpu, or None.

    Returns:
        (the wheel's path, the path in it of Horovod's TensorFlow library).
        Without such a wheel the train-cpu image compiles Horovod itself (about
        45 minutes on 2 cores). The image checks the wheel fully (tags, Gloo,
        its TensorFlow) and compiles when it does not fit.
    """
    for wheel in filter(_for_image_python, _images_sh("horovod-wheel").stdout.split()):
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if (name.startswith("horovod/tensorflow/mpi_lib") and name.endswith(".so")
                        and b"libmpi.so" in archive.read(name)):
                    return wheel, name
    return None


def _slow_build(target: str) -> str | None:
    """Why building `target` does not fit `make test`'s budget, or None."""
    if (target == "train-cpu" and os.environ.get("VISPIPE_BUILD_ALL_IMAGES") != "1"
            and horovod_wheel() is None):
        return (f"{target}: no Horovod wheel with MPI to give the image (`make horovod` builds "
                "one, with MPI where OpenMPI's headers are installed, as root), and compiling "
                "Horovod in the image takes about 45 minutes on 2 cores; "
                "`make image-test` builds and tests it anyway")
    return None


def skip_reason(target: str) -> str | None:
    """Why images of `target` cannot be built or run here, or None."""
    if target in _skip:
        return _skip[target]
    reason = None
    if slow := _slow_build(target):
        reason = slow
    elif not ENGINE:
        reason = "no container engine (podman or docker); `make containers` installs podman as root"
    elif (info := _engine("info")).returncode != 0:
        reason = f"{ENGINE} does not work here: {(info.stderr.strip().splitlines() or ['?'])[-1]}"
    else:
        base = base_image(target)
        if (_engine("image", "inspect", base).returncode != 0
                and _engine("pull", base, timeout=600).returncode != 0):
            reason = (f"base image {base} is not available: no registry reachable and no local "
                      f"stand-in localhost/{base} "
                      "(../shared/containers/setup-podman.sh builds one)")
    _skip[target] = reason
    return reason


def build_image(target: str) -> BuiltImage:
    """Builds a Dockerfile target once per session (skips when it cannot be built here).

    The build time reported includes waiting for another test process's build.
    """
    if target in _built:
        return _built[target]
    reason = skip_reason(target)
    if reason:
        pytest.skip(reason)
    start = time.monotonic()
    with open(BUILD_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run([IMAGES_SH, "build", target], capture_output=True, text=True,
                                timeout=BUILD_TIMEOUT_S)
    if result.returncode != 0:
        pytest.fail(f"building {target} failed:\n{(result.stdout + result.stderr)[-5000:]}")
    tag = _images_sh("tag", target).stdout.strip()
    size = image_size(tag)
    _built[target] = BuiltImage(tag, time.monotonic() - start, size)
    print(f"\n[image] {tag}: built in {_built[target].build_s:.0f} s, {size / 1e6:.0f} MB")
    return _built[target]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2,
             fail: bool = True) -> Any:
    """Polls `condition` until it returns something truthy.

    After `timeout` s: fails the test, or with `fail=False` returns the last value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            break
        time.sleep(interval)
    if not value and fail:
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
    return value


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The rendered object of `kind` named `name`."""
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


@dataclasses.dataclass
class Volumes:
    """What the cluster's storage would hold, on this host.

    Args:
        claims: PersistentVolumeClaim name -> host folder.
        docs: The rendered manifests, for ConfigMap contents.
        secrets: Secret name -> host folder holding its files.
        work_dir: Where ConfigMap folders are written.
    """

    claims: dict[str, str]
    docs: list[dict[str, Any]]
    work_dir: str
    secrets: dict[str, str] = dataclasses.field(default_factory=dict)

    def config_map(self, name: str) -> str:
        folder = os.path.join(self.work_dir, f"configmap-{name}")
        if not os.path.isdir(folder):
            os.makedirs(folder)
            for key, text in find(self.docs, "ConfigMap", name)["data"].items():
                with open(os.path.join(folder, key), "w", encoding="utf-8") as f:
                    f.write(text)
        return folder


class Container:
    """One started container (removed by `remove`)."""

    def __init__(self, name: str, argv: list[str]):
        self.name = name
        self.argv = argv
        self.started_at = time.monotonic()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(argv)}\nfailed to start: {result.stderr[-3000:]}")

    def state(self) -> dict[str, Any]:
        out = _engine("inspect", "--format", "{{json .State}}", self.name).stdout
        return json.loads(out) if out.strip() else {}

    def running(self) -> bool:
        return bool(self.state().get("Running"))

    def wait(self, timeout: float) -> int:
        """The exit status, once the container has stopped."""
        wait_for(lambda: not self.running(), timeout, f"container {self.name} to exit",
                 interval=0.5)
        return int(self.state()["ExitCode"])

    def logs(self, tail: int = 200) -> str:
        result = _engine("logs", "--tail", str(tail), self.name)
        return result.stdout + result.stderr

    def exec(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return _engine("exec", self.name, *command, timeout=timeout)

    def kill(self, signal: str = "KILL") -> None:
        _engine("kill", "--signal", signal, self.name, check=True)

    def healthcheck(self) -> bool:
        """Runs the image's HEALTHCHECK once; True when it passes (else see `health_output`)."""
        result = _engine("healthcheck", "run", self.name, timeout=60)
        self.health_output = result.stdout + result.stderr
        return result.returncode == 0

    def health_status(self) -> str:
        state = self.state()
        health = state.get("Health") or state.get("Healthcheck") or {}
        return health.get("Status", "")

    def remove(self) -> None:
        _engine("rm", "--force", "--time", "5", self.name, timeout=60)


def _rewrite_network(argv: list[str], ports: dict[int, int]) -> list[str]:
    """Remaps containerPorts to the loopback ports of this run, 0.0.0.0 to 127.0.0.1."""
    out = []
    for token in argv:
        flag, eq, value = token.rpartition("=") if token.startswith("-") else ("", "", token)
        if value.isdigit() and int(value) in ports:
            value = str(ports[int(value)])
        elif value == "0.0.0.0":
            value = "127.0.0.1"
        out.append(flag + eq + value)
    return out


def _volume_folder(volume: dict[str, Any], mount: dict[str, Any], volumes: Volumes) -> str:
    """The host folder standing in for a mounted volume (not for an emptyDir)."""
    if "persistentVolumeClaim" in volume:
        claim = volume["persistentVolumeClaim"]["claimName"]
        return os.path.join(volumes.claims[claim], mount.get("subPath", ""))
    if "configMap" in volume:
        return volumes.config_map(volume["configMap"]["name"])
    if "secret" in volume:
        return volumes.secrets[volume["secret"]["secretName"]]
    raise ValueError(f"volume {volume['name']}: no host folder for a {sorted(volume)} volume")


def host_path(pod: dict[str, Any], volumes: Volumes, container_path: str) -> str:
    """Where `container_path`, under one of the pod's volume mounts, is on this host."""
    container = pod["containers"][0]
    by_name = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in sorted(container.get("volumeMounts", []), key=lambda m: -len(m["mountPath"])):
        root = mount["mountPath"].rstrip("/")
        if container_path == root or container_path.startswith(root + "/"):
            folder = _volume_folder(by_name[mount["name"]], mount, volumes)
            return os.path.normpath(os.path.join(folder, os.path.relpath(container_path, root)))
    raise ValueError(f"{container_path}: under none of the pod's volume mounts")


def _chgrp_writable(path: str, gid: int) -> None:
    """What the kubelet does to a volume for fsGroup: group gid, writable, setgid dirs."""
    for root, dirs, files in os.walk(path):
        for entry in [root] + [os.path.join(root, f) for f in files]:
            os.chown(entry, -1, gid)
            mode = os.stat(entry).st_mode
            os.chmod(entry, mode | 0o060 | (0o2010 if os.path.isdir(entry) else 0))


def _memory(quantity: str) -> str:
    units = {"Ki": "k", "Mi": "m", "Gi": "g"}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(quantity))
    if not match:
        raise ValueError(f"memory limit: expected e.g. 2Gi, got {quantity!r}")
    return match.group(1) + units.get(match.group(2) or "", "b")


def run_container(
    pod: dict[str, Any],
    image: str,
    volumes: Volumes,
    *,
    role: str,
    ports: dict[int, int] | None = None,
    hostname: str = "",
    env: dict[str, str] | None = None,
    read_only_claims: bool = False,
    extra_mounts: list[tuple[str, str]] = (),
    extra_args: list[str] = (),
) -> Container:
    """Starts the first container of a pod spec as its kubelet would (see the module doc).

    Args:
        pod: A pod spec (`template.spec` of a Deployment, Job or MPIJob replica).
        image: The local image to run in place of the manifest's.
        volumes: Host stand-ins for the pod's volumes.
        role: Short name for the container's name.
        ports: containerPort -> loopback port of this run.
        hostname: The pod's hostname.
        env: Variables the cluster adds (the MPI Operator's, for example).
        read_only_claims: Mount every PersistentVolumeClaim read-only.
        extra_mounts: (host path, container path) pairs, read-only, that the
            cluster would provide (the MPI Operator's hostfile and ssh key).
        extra_args: Appended to the container's command line.

    Returns:
        The started container.
    """
    container = pod["containers"][0]
    pod_security = pod.get("securityContext", {})
    security = {**pod_security, **container.get("securityContext", {})}
    name = f"vispipe-test-{role}-{uuid.uuid4().hex[:8]}"
    argv = [ENGINE, "run", "--detach", "--name", name, "--network", "host", "--pull", "never"]
    if hostname:
        argv += ["--hostname", hostname]
    if "runAsUser" in security:
        user = security["runAsUser"]
        argv += ["--user", f"{user}:{security.get('runAsGroup', user)}"]
    if security.get("runAsNonRoot"):
        assert security.get("runAsUser", 0) != 0, "runAsNonRoot with runAsUser 0"
    fs_group = pod_security.get("fsGroup")
    if fs_group is not None:
        argv += ["--group-add", str(fs_group)]
    if security.get("readOnlyRootFilesystem"):
        argv += ["--read-only", "--read-only-tmpfs=false"]
    if security.get("allowPrivilegeEscalation") is False:
        argv += ["--security-opt", "no-new-privileges"]
    for cap in security.get("capabilities", {}).get("drop", []):
        argv += ["--cap-drop", cap]
    limits = container.get("resources", {}).get("limits", {})
    if "memory" in limits:
        argv += ["--memory", _memory(limits["memory"])]
    for var in container.get("env", []):
        if "value" not in var:
            raise ValueError(f"env {var['name']}: only plain values are supported, got {var}")
        argv += ["--env", f"{var['name']}={var['value']}"]
    for key, value in (env or {}).items():
        argv += ["--env", f"{key}={value}"]
    by_name = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = by_name[mount["name"]]
        if "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit")
            options = f"rw,mode=1777{',size=' + _memory(size) if size else ''}"
            argv += ["--tmpfs", f"{mount['mountPath']}:{options}"]
            continue
        source = _volume_folder(volume, mount, volumes)
        read_only = mount.get("readOnly", False) or "persistentVolumeClaim" not in volume
        if "persistentVolumeClaim" in volume:
            os.makedirs(source, exist_ok=True)
            read_only = (read_only or read_only_claims
                         or volume["persistentVolumeClaim"].get("readOnly", False))
            if fs_group is not None and not read_only:
                _chgrp_writable(source, fs_group)
        argv += ["--volume", f"{source}:{mount['mountPath']}:{'ro' if read_only else 'rw'}"]
    for source, target in extra_mounts:
        argv += ["--volume", f"{source}:{target}:ro"]
    command = container.get("command")
    args = list(container.get("args", []))
    if command:
        argv += ["--entrypoint", json.dumps(_rewrite_network(command, ports or {}))]
    argv.append(image)
    argv += _rewrite_network(args, ports or {}) + list(extra_args)
    return Container(name, argv)
