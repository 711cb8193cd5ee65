"""Kubernetes manifests: rendered overlays validate, and carry a pipeline's settings."""

from __future__ import annotations

import argparse
import json
import os
import subprocess

import pytest
import yaml

from conftest import REPO_ROOT
from vispipe.config_io import from_dict
from vispipe.configs import ModelConfig, TrainConfig
from vispipe.deploy import add_k8s_parser, kustomize, render

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")

K8S_VERSION = "1.30"
PIPELINE = os.path.join(REPO_ROOT, "pipelines", "mnist-lenet.yaml")
MPIJOB_CRD = os.path.join(REPO_ROOT, "k8s", "schemas", "kubeflow.org_mpijobs.yaml")


def _mpijob_schema() -> dict:
    crd = yaml.safe_load(open(MPIJOB_CRD, encoding="utf-8"))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v2beta1")
    return version["schema"]["openAPIV3Schema"]


def _validate(doc: dict) -> None:
    if doc["kind"] == "MPIJob":
        jsonschema.validate(doc, _mpijob_schema())
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _find(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
@pytest.mark.parametrize("pipeline", [None, PIPELINE])
def test_every_rendered_manifest_validates(overlay, pipeline):
    docs = render(pipeline, overlay=overlay, workers=3)
    kinds = {d["kind"] for d in docs}
    assert {"Job", "MPIJob", "Deployment", "Service", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "ConfigMap", "PersistentVolumeClaim"} <= kinds
    for doc in docs:
        _validate(doc)


def test_an_invalid_mpijob_is_rejected_by_the_crd_schema():
    mpijob = _find(render(overlay="cpu"), "MPIJob", "vispipe-horovod")
    mpijob["spec"]["mpiImplementation"] = "NotAnMPI"
    with pytest.raises(jsonschema.ValidationError, match="NotAnMPI"):
        _validate(mpijob)
    job = _find(render(overlay="cpu"), "Job", "vispipe-train")
    job["spec"]["backoffLimit"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(job)


def test_pipeline_settings_reach_the_manifests():
    docs = render(PIPELINE, overlay="gpu", workers=3, gpus=2, image="reg/train:1",
                  serve_image="reg/serve:1", dataset_dir="/data/datasets/digits")
    name = yaml.safe_load(open(PIPELINE))["name"]
    mpijob = _find(docs, "MPIJob", "vispipe-horovod")
    assert mpijob["spec"]["slotsPerWorker"] == 2
    worker = mpijob["spec"]["mpiReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 3
    assert worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    launcher = mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in launcher["env"]}
    assert env == {"VISPIPE_DATASET_DIR": "/data/datasets/digits",
                   "VISPIPE_RUN_DIR": f"/data/runs/{name}-horovod", "VISPIPE_NP": "6"}
    assert launcher["image"] == "reg/train:1"
    multi = _find(docs, "Job", "vispipe-multiworker")
    assert multi["spec"]["completions"] == multi["spec"]["parallelism"] == 3
    config = yaml.safe_load(_find(docs, "ConfigMap", "vispipe-train-config")["data"]["train.yaml"])
    assert from_dict(TrainConfig, config["train"]) == from_dict(
        TrainConfig, yaml.safe_load(open(PIPELINE))["train"])
    assert from_dict(ModelConfig, config["model"]).name == "lenet"
    serve = _find(docs, "Deployment", "vispipe-serve")["spec"]["template"]["spec"]
    container = serve["containers"][0]
    assert container["image"] == "reg/serve:1"
    assert "--model_config_file=/config/models.config" in container["args"]  # TF Serving's flags
    assert f'name: "{name}"' in _find(docs, "ConfigMap", "tfserving-models-config")["data"][
        "models.config"]


def test_serving_pods_are_probed_non_root_and_read_only():
    for overlay in ("cpu", "gpu"):
        docs = render(overlay=overlay)
        pod = _find(docs, "Deployment", "vispipe-serve")["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/mnist"  # as TF Serving's
        assert container["livenessProbe"]["tcpSocket"]["port"] == "grpc"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert {"requests", "limits"} <= set(container["resources"])
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
        assert mount["readOnly"] is True


def _training_pods(docs) -> list[tuple[dict, str]]:
    """(container, the variables its `vispipe train` process gets) of each training pod."""
    single = _find(docs, "Job", "vispipe-train")["spec"]["template"]["spec"]["containers"][0]
    multi = _find(docs, "Job", "vispipe-multiworker")["spec"]["template"]["spec"][
        "containers"][0]
    specs = _find(docs, "MPIJob", "vispipe-horovod")["spec"]["mpiReplicaSpecs"]
    worker = specs["Worker"]["template"]["spec"]["containers"][0]
    mpirun = specs["Launcher"]["template"]["spec"]["containers"][0]["args"][0]
    exported = " ".join(f"{e['name']}={e['value']}" for e in single["env"] + multi["env"])
    return [(single, exported), (multi, exported), (worker, mpirun)]


def test_training_pods_read_imagenet_weights_from_the_shared_volume():
    for overlay in ("cpu", "gpu"):
        for container, variables in _training_pods(render(overlay=overlay)):
            mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/weights")
            assert (mount["name"], mount["subPath"], mount["readOnly"]) == ("data", "weights", True)
            assert "VISPIPE_WEIGHTS_DIR=/weights" in variables  # --weights-dir of every rank
            assert "KERAS_HOME=/data/keras" in variables  # downloads cached once, shared


def test_cpu_overlay_requests_no_gpus_and_gpu_overlay_one_per_pod():
    def gpu_limits(docs):
        found = []
        for doc in docs:
            text = json.dumps(doc)
            found.append(text.count('"nvidia.com/gpu": 1'))
        return sum(found)

    assert "nvidia.com/gpu" not in yaml.safe_dump_all(render(overlay="cpu"))
    assert gpu_limits(render(overlay="gpu")) == 4  # train, multi-worker, horovod worker, tfserving


def test_multiworker_pods_build_tf_config_from_their_index():
    docs = render(overlay="cpu", workers=3)
    script = _find(docs, "Job", "vispipe-multiworker")["spec"]["template"]["spec"][
        "containers"][0]["args"][0]
    env = {e["name"]: e["value"] for e in _find(docs, "Job", "vispipe-multiworker")[
        "spec"]["template"]["spec"]["containers"][0]["env"]}
    prefix = script[: script.index("if [")]
    out = subprocess.run(["/bin/sh", "-c", prefix + 'printf %s "$TF_CONFIG"'],
                         env={**env, "JOB_COMPLETION_INDEX": "1", "PATH": os.environ["PATH"]},
                         capture_output=True, text=True, check=True).stdout
    tf_config = json.loads(out)
    assert tf_config["task"] == {"type": "worker", "index": 1}
    assert tf_config["cluster"]["worker"] == [
        f"vispipe-multiworker-{i}.vispipe-multiworker:12345" for i in range(3)]


def test_k8s_render_verb_writes_the_manifests(tmp_path):
    parser = argparse.ArgumentParser()
    add_k8s_parser(parser.add_subparsers(dest="verb"))
    out = tmp_path / "all.yaml"
    args = parser.parse_args(["k8s", "render", PIPELINE, "--overlay", "gpu", "--workers", "4",
                              "--out", str(out)])
    assert args.handler(args) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    assert _find(docs, "MPIJob", "vispipe-horovod")["spec"]["mpiReplicaSpecs"]["Worker"][
        "replicas"] == 4


def test_bad_settings_and_unknown_patch_targets_are_reported(tmp_path):
    with pytest.raises(ValueError, match="--overlay: expected one of"):
        render(overlay="tpu")
    with pytest.raises(ValueError, match="--gpus: expected 0 with the cpu overlay"):
        render(overlay="cpu", gpus=1)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.join(REPO_ROOT, "k8s", "base", "storage.yaml")],
        "patches": [{"target": {"kind": "Job", "name": "missing"},
                     "patch": "- {op: add, path: /spec/x, value: 1}"}]}))
    with pytest.raises(ValueError, match="matches no resource"):
        kustomize(str(tmp_path))
