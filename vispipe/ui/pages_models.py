"""New model: dataset, network (standard, previous run, custom), solver; LR tools.

Example:

```python
app.include_router(router)
```
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import os
import time
from dataclasses import dataclass, field

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.datastructures import UploadFile

from vispipe.configs import LRFinderConfig, PipelineConfig
from vispipe.data.balance import CLASS_WEIGHT_MODES
from vispipe.models import IMAGENET_NETWORKS, list_models
from vispipe.registry import Entry, Registry
from vispipe.ui.config_form import FormField, checked_config, form_defaults, options, read_fields
from vispipe.ui.devices import capabilities, horovod_launcher
from vispipe.ui.forms import choice_field, int_field, new_folder_field, text_field
from vispipe.ui.settings import UnsafeInputError
from vispipe.ui.templating import render
from vispipe.ui.uploads import read_limited
from vispipe.ui.weights_store import WEIGHTS_TYPES, find_weights, list_weights, store_weights

__all__ = ["router", "TrainForm", "parse_train_form", "IMAGENET", "PRETRAINED_CHOICES",
           "LR_FIND_STEPS"]

router = APIRouter()

IMAGENET = "imagenet"  # `model.weights` of keras.applications' ImageNet weights
# Form field -> config key: types, defaults and allowed values come from the config classes.
TRAIN_FIELDS = (
    FormField("network", "model.name"),
    FormField("epochs", "train.epochs", 1, 10_000),
    FormField("batch_size", "train.batch_size", 1, 65_536),
    FormField("optimizer", "train.optimizer"),
    FormField("seed", "train.seed", 0, 2**31 - 1),
    FormField("val_interval", "train.val_interval", 0, 10_000),
    FormField("snapshot_interval", "train.snapshot_interval", 1, 10_000),
    FormField("steps_per_epoch", "train.steps_per_epoch", 0, 10**7),
    FormField("base_lr", "train.lr.base_lr", 1e-9, 100),
    FormField("policy", "train.lr.policy"),
    FormField("gamma", "train.lr.gamma", 0, 100),
    FormField("step_size", "train.lr.step_size", 0.1, 100),
    FormField("power", "train.lr.power", 0, 100),
    FormField("flip_horizontal", "train.augment.flip_horizontal"),
    FormField("flip_vertical", "train.augment.flip_vertical"),
    FormField("rotation", "train.augment.rotation", 0, 180),
    FormField("zoom", "train.augment.zoom", 0, 0.9),
    FormField("translate", "train.augment.translate", 0, 0.9),
    FormField("freeze_epochs", "model.freeze_epochs", -1, 10_000),
    FormField("unfreeze_blocks", "model.unfreeze_blocks", 0, 1000),
    FormField("finetune_lr_factor", "model.finetune_lr_factor", 1e-6, 10),
    FormField("finetune_lr_mult", "model.finetune_lr_mult", 1, 1000),
)
# Offered as this machine allows (`capabilities`); the defaults still come from the config.
DEVICE_FIELDS = (FormField("mixed_precision", "train.mixed_precision"),
                 FormField("distributed", "train.distributed"))
# Where a new model's weights start: "none" (random), ImageNet (`model.weights: imagenet`, for
# the networks keras.applications publishes weights of), an earlier run, or a stored file.
PRETRAINED_CHOICES = ("none", IMAGENET, "run", "file")
# The LR finder started from the form: steps of its range test.
LR_FIND_STEPS = 60


def _choices(registry: Registry) -> tuple[list, list]:
    datasets = [e for e in registry.list("dataset")
                if e.status == "completed" and os.path.isdir(e.path)]
    runs = [e for e in registry.list("run") if e.status == "completed" and os.path.isdir(e.path)]
    return datasets, runs


def _page(request: Request, form: dict, errors: dict, status_code: int = 200):
    registry = Registry.open()
    try:
        datasets, runs = _choices(registry)
    finally:
        registry.close()
    caps = capabilities()
    form = {**form_defaults(TRAIN_FIELDS + DEVICE_FIELDS), "pretrained": "none", **form}
    return render(request, "model_new.html", status_code=status_code, form=form, errors=errors,
                  datasets=datasets, runs=runs, networks=list_models(),
                  imagenet_networks=IMAGENET_NETWORKS,
                  policies=options("train.lr.policy"), optimizers=options("train.optimizer"),
                  stored_weights=list_weights(request.app.state.settings),
                  weights_types=tuple(WEIGHTS_TYPES), caps=caps,
                  processes=_processes_range(caps.gpus))


@router.get("/models/new")
def new_model(request: Request):
    return _page(request, {"dataset": request.query_params.get("dataset", "")}, {})


def _check_custom_code(code: str) -> str | None:
    """Why the custom network text cannot be used, or None."""
    if len(code) > 100_000:
        return f"expected at most 100000 characters, got {len(code)}"
    try:
        tree = ast.parse(code, "<custom network>")
    except SyntaxError as error:
        return f"Python syntax error on line {error.lineno}: {error.msg}"
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    if "build" not in names:
        return "expected a function build(input_shape, num_classes) returning a keras.Model"
    return None


def _save_network(settings, code: str) -> str:
    """Writes custom network code to `<home>/networks/<content hash>.py`; returns the path."""
    path = os.path.join(settings.folder("networks"),
                        hashlib.sha256(code.encode()).hexdigest()[:16] + ".py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(code)
    return path


def _processes_range(gpus: int) -> tuple[int, int]:
    """(most, default) Horovod ranks: one per GPU, else up to one per CPU core."""
    most = gpus if gpus >= 2 else max(2, os.cpu_count() or 2)
    return most, (most if gpus >= 2 else 2)


@dataclass
class TrainForm:
    """A submitted New-model form, as a `vispipe train` job.

    Attributes:
        name: The model's name.
        run_dir: The run folder to create.
        dataset_dir: The dataset to train on ("" when none was chosen).
        config: The `model` and `train` sections, checked.
        launcher: `horovodrun ...` prefixing the job's command (empty for
            one process).
        errors: Problems by form field; the job is only usable without any.
    """

    name: str
    run_dir: str
    dataset_dir: str
    config: PipelineConfig
    launcher: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def train_job(self) -> tuple[list[str], dict]:
        """`vispipe train`'s operands and its config sections."""
        return (["train", "--dataset", self.dataset_dir, "--run", self.run_dir, "--name", self.name],
                {"model": self.config.model, "train": self.config.train})

    def lr_find_job(self, out_dir: str) -> tuple[list[str], dict]:
        """`vispipe lr-find` on the same network and solver, into `out_dir`."""
        return (["lr-find", "--dataset", self.dataset_dir, "--out", out_dir],
                {"model": self.config.model, "train": self.config.train,
                 "lr_find": LRFinderConfig(num_steps=LR_FIND_STEPS)})


def _pretrained(form, settings, network: str, runs: list[Entry], errors: dict[str, str]) -> str:
    """`model.weights` of the form's "pretrained" choice ("" for random weights)."""
    kind = choice_field(form, "pretrained", PRETRAINED_CHOICES, errors, "none")
    if kind == IMAGENET:
        if network not in IMAGENET_NETWORKS:
            errors["pretrained"] = (f"ImageNet weights are published for "
                                    f"{', '.join(IMAGENET_NETWORKS)}; got network {network!r}")
        return IMAGENET
    if kind == "run":
        start = text_field(form, "weights_run")
        run = next((r for r in runs if str(r.id) == start), None)
        if run is None:
            errors["weights_run"] = f"expected one of the completed runs, got {start!r}"
        return run.path if run else ""
    if kind == "file":
        stored = find_weights(settings, text_field(form, "weights_file"))
        if stored is None:
            errors["weights_file"] = ("expected a stored weights file or an upload, got "
                                      f"{text_field(form, 'weights_file')!r}")
        return stored.path if stored else ""
    return ""


def _model_section(form, settings, tree: dict, runs: list[Entry], errors: dict[str, str]) -> None:
    """The network's keys of the tree: custom code and pretrained weights."""
    networks = tuple(s.name for s in list_models()) + ("custom",)
    model = tree.setdefault("model", {})
    model["name"] = choice_field(form, "network", networks, errors, model["name"])
    if model["name"] == "custom":
        code = text_field(form, "custom_code")
        problem = _check_custom_code(code)
        if problem:
            errors["custom_code"] = problem
        else:
            model["custom_path"] = _save_network(settings, code)
    model["weights"] = _pretrained(form, settings, model["name"], runs, errors)


def _device_section(form, tree: dict, errors: dict[str, str]) -> list[str]:
    """Mixed precision and distribution (what this machine offers); returns the launcher."""
    caps = capabilities()
    train = tree["train"]
    defaults = form_defaults(DEVICE_FIELDS)
    train["mixed_precision"] = choice_field(form, "mixed_precision", caps.mixed_precision,
                                            errors, defaults["mixed_precision"])
    distributed = choice_field(form, "distributed", caps.distributed, errors,
                               defaults["distributed"])
    if "distributed" in errors or distributed == "none":
        return []
    train["distributed"] = distributed
    if distributed != "horovod":
        return []
    most, default = _processes_range(caps.gpus)
    return horovod_launcher(int_field(form, "processes", errors, low=2, high=most,
                                      default=default))


def parse_train_form(form, settings, registry: Registry) -> TrainForm:
    """The `vispipe train` job of a submitted New-model form.

    The settings go through the checker a `--config` file goes through.
    """
    errors: dict[str, str] = {}
    name, out = new_folder_field(form, settings.folder("runs"), "model", errors)
    datasets, runs = _choices(registry)
    dataset = next((d for d in datasets if str(d.id) == text_field(form, "dataset")), None)
    if dataset is None:
        errors["dataset"] = f"expected one of the completed datasets, got {text_field(form, 'dataset')!r}"
    tree = read_fields(form, TRAIN_FIELDS, errors)
    _model_section(form, settings, tree, runs, errors)
    _balance_section(form, tree["train"], errors)
    train = tree["train"]
    for interval in ("val_interval", "snapshot_interval"):
        if interval not in errors and train[interval] > train["epochs"]:
            errors[interval] = f"expected at most the epochs ({train['epochs']}), got {train[interval]}"
    launcher = _device_section(form, tree, errors)
    config = checked_config(tree, TRAIN_FIELDS, errors)
    return TrainForm(name, out, dataset.path if dataset else "", config, launcher, errors)



def _balance_section(form, train: dict, errors: dict[str, str]) -> None:
    """Class weights (a select), balanced batches and MLflow tracking (checkboxes)."""
    train["class_weight"] = choice_field(form, "class_weight", CLASS_WEIGHT_MODES, errors, "none")
    train["sampler"] = "balanced" if form.get("balanced_sampler") else "none"
    train["tracking"] = "mlflow" if form.get("mlflow") else "none"

async def _stored_upload(request: Request, form) -> dict:
    """The form with an uploaded weights file stored and chosen (`weights_file`)."""
    upload = form.get("weights_upload")
    fields = {k: v for k, v in form.items() if not isinstance(v, UploadFile)}
    if not isinstance(upload, UploadFile) or not upload.filename:
        return fields
    settings = request.app.state.settings
    data = await read_limited(upload, settings.max_upload_bytes)
    try:
        # Hashing and writing a large file: off the event loop.
        stored = await asyncio.to_thread(store_weights, data, upload.filename, settings)
    except UnsafeInputError as error:
        raise HTTPException(415, str(error)) from None
    return dict(fields, pretrained="file", weights_file=stored.id)


@router.post("/models/new")
async def create_model(request: Request):
    settings = request.app.state.settings
    form = await _stored_upload(request, await request.form())
    registry = Registry.open()
    try:
        job = parse_train_form(form, settings, registry)
    finally:
        registry.close()
    queue = request.app.state.queue
    # The LR finder needs everything but a name for the model.
    problems = {k: v for k, v in job.errors.items() if k != "name" or form.get("action") != "lr-find"}
    if form.get("action") == "lr-find" and not problems:
        lr_dir = os.path.join(settings.folder("lr"), time.strftime("%Y%m%d-%H%M%S"))
        argv, config = job.lr_find_job(lr_dir)
        job_id = queue.submit("LR finder", "lr-find", argv, config=config, target=lr_dir,
                              target_kind="lr")
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)
    if problems:
        return _page(request, form, problems, status_code=400)
    argv, config = job.train_job()
    job_id = queue.submit(f"Train {job.name}", "train", argv, config=config, target=job.run_dir,
                          target_kind="run", launcher=job.launcher)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


# Without a dataset chosen, the network is built for MNIST-sized inputs.
_PREVIEW_SHAPE, _PREVIEW_CLASSES = (28, 28, 1), 10


@router.post("/models/network-preview")
async def network_preview(request: Request):
    """The layer graph of the custom network text, built for the chosen dataset (JSON).

    No job is started: the network is built in a short-lived child process
    (`vispipe.ui.network_summary`) with the same checks training applies.
    The reply is that summary plus `built_for` and `graph_svg`, the layer
    graph drawn by `vispipe.ui.layer_graph`.
    """
    from vispipe.data.format import read_dataset_info
    from vispipe.ui.layer_graph import layer_graph_svg
    from vispipe.ui.network_summary import describe_network

    form = await request.form()
    code = text_field(form, "custom_code")
    problem = _check_custom_code(code)
    if problem:
        return JSONResponse({"errors": {"custom_code": problem}}, status_code=400)
    registry = Registry.open()
    try:
        datasets, _ = _choices(registry)
    finally:
        registry.close()
    chosen = next((d for d in datasets if str(d.id) == text_field(form, "dataset")), None)
    shape, classes = _PREVIEW_SHAPE, _PREVIEW_CLASSES
    for_what = f"no dataset chosen: {'x'.join(map(str, shape))} images, {classes} classes"
    if chosen is not None:
        try:
            info = read_dataset_info(chosen.path)
        except (FileNotFoundError, ValueError) as error:
            return JSONResponse({"errors": {"dataset": str(error)}}, status_code=400)
        shape, classes = info.image_shape, info.num_classes
        for_what = (f"dataset {chosen.name}: {'x'.join(map(str, shape))} images, "
                    f"{classes} classes")
    summary = await describe_network(_save_network(request.app.state.settings, code), shape,
                                     classes)
    if "error" in summary:
        return JSONResponse({"errors": {"custom_code": summary["error"]}}, status_code=400)
    return JSONResponse(dict(summary, built_for=for_what,
                             graph_svg=layer_graph_svg(summary["layers"])))


@router.get("/api/lr-preview")
def lr_preview(request: Request):
    """Points of the LR policy over training, for the form's live preview plot."""
    import numpy as np

    from vispipe.train.policies import lr_at

    errors: dict[str, str] = {}
    fields = [f for f in TRAIN_FIELDS if f.key.startswith("train.lr.")]
    cfg = checked_config(read_fields(request.query_params, fields, errors), fields, errors).train.lr
    if errors:
        return JSONResponse({"errors": errors}, status_code=400)
    total = 200
    steps = np.arange(total)
    try:
        values = lr_at(cfg, total, steps)
    except ValueError as error:
        return JSONResponse({"errors": {"policy": str(error)}}, status_code=400)
    return {"percent": (steps * 100 / total).tolist(), "lr": [float(v) for v in values]}
