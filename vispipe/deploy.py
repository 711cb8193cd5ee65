"""`vispipe k8s render`: the Kubernetes manifests of a pipeline.

Renders `k8s/overlays/<overlay>` the way `kubectl kustomize` does for the
features these manifests use (`resources` files and folders, `labels`,
`images`, `namespace`, inline JSON 6902 `patches` with a kind/name target),
then fills in a pipeline's settings: the images, the dataset and run folders
on the shared volume, GPUs per worker, the worker count, the model/train
sections given to `vispipe train --config`, and the served model's name.

Example:

```python
docs = render("pipelines/mnist-lenet.yaml", overlay="gpu", workers=4, gpus=1,
              image="registry.example/vispipe-train:0.1.0-gpu")
print(dump_manifests(docs))
```
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
from typing import Any

import yaml

from vispipe.fileio import write_text_atomic

__all__ = ["RenderSettings", "add_k8s_parser", "dump_manifests", "kustomize", "render"]

K8S_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "k8s")
OVERLAYS = ("cpu", "gpu")
_GPU = "nvidia.com/gpu"
_TRAIN_IMAGE = "vispipe-train"
_SERVE_IMAGE = "vispipe-serve"


@dataclasses.dataclass
class RenderSettings:
    """What `render` fills into the manifests.

    Args:
        name: Pipeline name: run and export folder names, served model name.
        overlay: One of `OVERLAYS`.
        image: Training image (default: the overlay's).
        serve_image: `vispipe serve` image (default: the overlay's).
        dataset_dir: Dataset folder on the shared volume.
        workers: Horovod workers (MPIJob) and multi-worker tasks.
        gpus: GPUs per training pod (Horovod slots per worker); 0 on CPU.
        namespace: Namespace of every object ("" keeps none).
        train_yaml: The `model:`/`train:` sections for `vispipe train --config`.
    """

    name: str = "mnist"
    overlay: str = "cpu"
    image: str = ""
    serve_image: str = ""
    dataset_dir: str = ""
    workers: int = 2
    gpus: int = 0
    namespace: str = ""
    train_yaml: str = ""


def _read_yaml_docs(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def _pointer_parts(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"JSON patch path: expected one starting with '/', got {path!r}.")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _apply_json_patch(doc: dict[str, Any], ops: list[dict[str, Any]], where: str) -> None:
    for op in ops:
        *parents, last = _pointer_parts(op["path"])
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        kind = op["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if kind == "add":
                node.insert(index, op["value"])
            elif kind == "replace":
                node[index] = op["value"]
            elif kind == "remove":
                del node[index]
            else:
                raise ValueError(f"{where}: unsupported patch op {kind!r} (add, replace, remove).")
        elif kind in ("add", "replace"):
            node[last] = op["value"]
        elif kind == "remove":
            del node[last]
        else:
            raise ValueError(f"{where}: unsupported patch op {kind!r} (add, replace, remove).")


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container of a workload (Pod templates, MPIJob replica specs)."""
    spec = doc.get("spec", {})
    templates = [spec.get("template")]
    templates += [r.get("template") for r in spec.get("mpiReplicaSpecs", {}).values()]
    found = []
    for template in filter(None, templates):
        pod = template.get("spec", {})
        found += pod.get("containers", []) + pod.get("initContainers", [])
    return found


def _set_image(image_rule: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        for container in _containers(doc):
            name, _, tag = container["image"].partition(":")
            if name != image_rule["name"]:
                continue
            name = image_rule.get("newName", name)
            tag = image_rule.get("newTag", tag)
            container["image"] = f"{name}:{tag}" if tag else name


def kustomize(folder: str) -> list[dict[str, Any]]:
    """Builds a kustomization folder (the subset of kustomize these manifests use).

    Args:
        folder: A folder with `kustomization.yaml`.

    Returns:
        The objects, in resource order.

    Raises:
        ValueError: A kustomization feature outside the subset, or a patch
            whose target matches nothing.

    Example:

    ```python
    docs = kustomize("k8s/overlays/cpu")
    ```
    """
    path = os.path.join(folder, "kustomization.yaml")
    with open(path, encoding="utf-8") as f:
        spec = yaml.safe_load(f) or {}
    known = {"apiVersion", "kind", "resources", "labels", "images", "namespace", "patches"}
    if set(spec) - known:
        raise ValueError(f"{path}: unsupported fields {sorted(set(spec) - known)}; "
                         f"vispipe's renderer supports {sorted(known)}.")
    docs: list[dict[str, Any]] = []
    for resource in spec.get("resources", []):
        target = os.path.normpath(os.path.join(folder, resource))
        docs += kustomize(target) if os.path.isdir(target) else _read_yaml_docs(target)
    for entry in spec.get("patches", []):
        target = entry.get("target", {})
        matched = [d for d in docs if d["kind"] == target.get("kind")
                   and d["metadata"]["name"] == target.get("name")]
        if not matched:
            raise ValueError(f"{path}: patch target {target} matches no resource.")
        for doc in matched:
            _apply_json_patch(doc, yaml.safe_load(entry["patch"]), path)
    for rule in spec.get("images", []):
        _set_image(rule, docs)
    for label_set in spec.get("labels", []):
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(label_set["pairs"])
    if spec.get("namespace"):
        for doc in docs:
            doc["metadata"]["namespace"] = spec["namespace"]
    return docs


def _set_env(container: dict[str, Any], name: str, value: str) -> None:
    for var in container.get("env", []):
        if var["name"] == name:
            var["value"] = value


def _apply_settings(docs: list[dict[str, Any]], s: RenderSettings) -> None:
    run_root = "/data/runs/" + s.name
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        doc["metadata"].setdefault("labels", {})["vispipe.io/pipeline"] = s.name
        if s.namespace:
            doc["metadata"]["namespace"] = s.namespace
        if kind == "ConfigMap" and name == "vispipe-train-config" and s.train_yaml:
            doc["data"]["train.yaml"] = s.train_yaml
        if kind == "ConfigMap" and name == "tfserving-models-config":
            doc["data"]["models.config"] = (
                "model_config_list {\n  config {\n"
                f'    name: "{s.name}"\n    base_path: "/models/{s.name}"\n'
                '    model_platform: "tensorflow"\n  }\n}\n'
            )
        if kind == "MPIJob":
            doc["spec"]["slotsPerWorker"] = max(s.gpus, 1)
            doc["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] = s.workers
        if kind == "Job" and doc["spec"].get("completionMode") == "Indexed":
            doc["spec"]["completions"] = doc["spec"]["parallelism"] = s.workers
        for container in _containers(doc):
            image = container["image"].partition(":")[0]
            if s.image and image.endswith(_TRAIN_IMAGE):
                container["image"] = s.image
            if s.serve_image and image.endswith(_SERVE_IMAGE):
                container["image"] = s.serve_image
            _render_container(container, kind, name, s, run_root)


def _render_container(container: dict[str, Any], kind: str, name: str,
                      s: RenderSettings, run_root: str) -> None:
    if s.dataset_dir:
        _set_env(container, "VISPIPE_DATASET_DIR", s.dataset_dir)
    suffix = {"vispipe-horovod": "-horovod", "vispipe-multiworker": "-multiworker"}.get(name, "")
    _set_env(container, "VISPIPE_RUN_DIR", run_root + suffix)
    _set_env(container, "VISPIPE_NP", str(s.workers * max(s.gpus, 1)))
    _set_env(container, "VISPIPE_WORKERS", str(s.workers))
    limits = container.get("resources", {}).get("limits", {})
    if _GPU in limits:
        if s.gpus:
            limits[_GPU] = s.gpus
        else:
            del limits[_GPU]
    args = container.get("args", [])
    if "--model-base-path" in args:
        args[args.index("--model-base-path") + 1] = f"/models/{s.name}"
        args[args.index("--model-name") + 1] = s.name
    for probe in ("readinessProbe", "livenessProbe"):
        http = container.get(probe, {}).get("httpGet")
        if http and http["path"].startswith("/v1/models/"):
            http["path"] = f"/v1/models/{s.name}"


def render(
    pipeline: str | None = None,
    *,
    overlay: str = "cpu",
    image: str = "",
    serve_image: str = "",
    dataset_dir: str = "",
    workers: int = 2,
    gpus: int | None = None,
    namespace: str = "",
    k8s_dir: str = K8S_DIR,
) -> list[dict[str, Any]]:
    """The manifests of a pipeline: kustomized overlay plus its settings.

    Args:
        pipeline: A pipeline YAML file (its name, model and train sections);
            None renders the overlay's defaults.
        overlay: One of `OVERLAYS`.
        image: Training image (default: the overlay's).
        serve_image: Serving image (default: the overlay's).
        dataset_dir: Dataset folder on the shared volume (default
            `/data/datasets/<name>`).
        workers: Horovod workers and multi-worker tasks (>= 1).
        gpus: GPUs per training pod (default: 1 for gpu, 0 for cpu).
        namespace: Namespace for every object.
        k8s_dir: The manifests folder (`k8s/` of the project).

    Returns:
        The objects, as dicts.

    Raises:
        ValueError: An unknown overlay, a bad worker/GPU count, or a
            pipeline that does not load.

    Example:

    ```python
    docs = render("pipelines/mnist-lenet.yaml", overlay="cpu", workers=3)
    ```
    """
    if overlay not in OVERLAYS:
        raise ValueError(f"--overlay: expected one of {OVERLAYS}, got {overlay!r}.")
    if workers < 1:
        raise ValueError(f"--workers: expected an integer >= 1, got {workers!r}.")
    gpus = (1 if overlay == "gpu" else 0) if gpus is None else gpus
    if gpus < 0 or (overlay == "cpu" and gpus):
        raise ValueError(f"--gpus: expected 0 with the cpu overlay and >= 0 with gpu, got {gpus!r}.")
    settings = RenderSettings(overlay=overlay, image=image, serve_image=serve_image,
                              workers=workers, gpus=gpus, namespace=namespace)
    if pipeline is not None:
        from vispipe.config_io import load_pipeline, to_dict

        config = load_pipeline(pipeline)
        settings.name = config.name
        settings.train_yaml = yaml.safe_dump(
            {"model": to_dict(config.model), "train": to_dict(config.train)}, sort_keys=False)
    settings.dataset_dir = dataset_dir or f"/data/datasets/{settings.name}"
    docs = copy.deepcopy(kustomize(os.path.join(k8s_dir, "overlays", overlay)))
    _apply_settings(docs, settings)
    return docs


def dump_manifests(docs: list[dict[str, Any]]) -> str:
    """One multi-document YAML text, as `kubectl apply -f -` reads it."""
    return yaml.safe_dump_all(docs, sort_keys=False)


def _run_render(args: argparse.Namespace) -> int:
    docs = render(args.pipeline, overlay=args.overlay, image=args.image or "",
                  serve_image=args.serve_image or "", dataset_dir=args.dataset_dir or "",
                  workers=args.workers, gpus=args.gpus, namespace=args.namespace or "")
    text = dump_manifests(docs)
    if not args.out:
        sys.stdout.write(text)
        return 0
    write_text_atomic(args.out, text)
    print(f"{len(docs)} manifests written to {args.out}", file=sys.stderr)
    return 0


def add_k8s_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers `k8s render` on an argparse subparsers object.

    Args:
        subparsers: The object returned by `parser.add_subparsers()`.

    Returns:
        The `k8s` parser; its handler is `args.handler(args) -> int`.

    Example:

    ```python
    verbs = argparse.ArgumentParser().add_subparsers(dest="verb")
    add_k8s_parser(verbs)
    ```
    """
    parser = subparsers.add_parser("k8s", help="Kubernetes manifests for training and serving")
    actions = parser.add_subparsers(dest="k8s_action", required=True)
    render_parser = actions.add_parser(
        "render", help="render k8s/overlays/<overlay> with a pipeline's settings")
    render_parser.add_argument("pipeline", nargs="?", help="pipeline YAML (default: the base's)")
    render_parser.add_argument("--overlay", choices=OVERLAYS, default="cpu")
    render_parser.add_argument("--image", help="training image")
    render_parser.add_argument("--serve-image", help="`vispipe serve` image")
    render_parser.add_argument("--dataset-dir", help="dataset folder on the shared volume")
    render_parser.add_argument("--workers", type=int, default=2,
                               help="Horovod workers / multi-worker tasks (default 2)")
    render_parser.add_argument("--gpus", type=int, help="GPUs per training pod (gpu overlay: 1)")
    render_parser.add_argument("--namespace", help="namespace of every object")
    render_parser.add_argument("--out", help="output file (default: stdout)")
    render_parser.set_defaults(handler=_run_render)
    return parser
