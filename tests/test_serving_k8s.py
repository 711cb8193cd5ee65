"""The vispipe serving Deployment is TF Serving's with another image: same args, probes, mounts."""

from __future__ import annotations

import argparse
import copy
import os

import pytest

from conftest import REPO_ROOT
from vispipe.deploy import kustomize, render
from vispipe.serving.cli import add_serve_parser, config_from_args

PIPELINE = os.path.join(REPO_ROOT, "pipelines", "mnist-lenet.yaml")


def _pod(docs: list[dict], name: str) -> dict:
    return next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)["spec"]["template"]["spec"]


def _without_images(pod: dict) -> dict:
    pod = copy.deepcopy(pod)
    for container in pod["containers"]:
        container.pop("image")
    return pod


@pytest.mark.parametrize("source", ["base", "cpu overlay", "pipeline"])
def test_vispipe_and_tf_serving_deployments_differ_only_in_the_image(source):
    if source == "base":
        docs = kustomize(os.path.join(REPO_ROOT, "k8s", "base"))
    else:
        docs = render(PIPELINE if source == "pipeline" else None, overlay="cpu", serve_image="reg/serve:1")
    vispipe, tfserving = _pod(docs, "vispipe-serve"), _pod(docs, "tfserving")
    assert vispipe["containers"][0]["args"] == tfserving["containers"][0]["args"]
    assert "--model_config_file=/config/models.config" in vispipe["containers"][0]["args"]
    assert _without_images(vispipe) == _without_images(tfserving)
    assert vispipe["containers"][0]["image"] != tfserving["containers"][0]["image"]


def test_the_shared_args_parse_as_a_vispipe_serve_command_line(tmp_path):
    # The image runs `python -m vispipe.serving`, so the container args are `serve`'s flags.
    docs = kustomize(os.path.join(REPO_ROOT, "k8s", "base"))
    args = list(_pod(docs, "vispipe-serve")["containers"][0]["args"])
    config_file = tmp_path / "models.config"
    config_file.write_text('model_config_list { config { name: "mnist" base_path: "/models/mnist" } }')
    args = [a.replace("/config/models.config", str(config_file)) for a in args]
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="verb"))
    config = config_from_args(parser.parse_args(["serve", *args]))
    assert (config.grpc_port, config.rest_port) == (8500, 8501)
    assert config.model_config_file == str(config_file) and config.model_config_poll_s == 60
    assert [m.name for m in config.model_specs()] == ["mnist"]
