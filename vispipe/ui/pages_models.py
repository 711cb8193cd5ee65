"""New model: dataset, network (standard, previous run, custom), solver; LR tools.

Example:

```python
app.include_router(router)
```
"""

from __future__ import annotations

import ast
import hashlib
import os
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse

from vispipe.configs import LR_POLICIES, OPTIMIZERS
from vispipe.data.balance import CLASS_WEIGHT_MODES
from vispipe.models import list_models
from vispipe.registry import Registry
from vispipe.ui.devices import capabilities, horovod_launcher
from vispipe.ui.forms import choice_field, float_field, int_field, new_folder_field, text_field
from vispipe.ui.templating import render

__all__ = ["router", "parse_train_form"]

router = APIRouter()

_DEFAULTS = {"network": "lenet", "epochs": "10", "batch_size": "64", "base_lr": "0.01",
             "policy": "fixed", "optimizer": "sgd", "seed": "42", "val_interval": "1",
             "snapshot_interval": "1", "gamma": "0.1", "step_size": "33", "power": "1"}


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
    return render(request, "model_new.html", status_code=status_code, form=form, errors=errors,
                  datasets=datasets, runs=runs, networks=list_models(), policies=LR_POLICIES,
                  optimizers=OPTIMIZERS, caps=caps, processes=_processes_range(caps.gpus))


@router.get("/models/new")
def new_model(request: Request):
    return _page(request, dict(_DEFAULTS, dataset=request.query_params.get("dataset", "")), {})


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


def parse_train_form(form, settings, registry: Registry
                     ) -> tuple[list[str], list[str], str, str, dict[str, str]]:
    """The `vispipe train` arguments of a submitted New-model form.

    Returns:
        (argv, launcher, name, run folder, errors by field); the launcher
        (`horovodrun ...`) prefixes the job's command, empty for one process.
    """
    errors: dict[str, str] = {}
    name, out = new_folder_field(form, settings.folder("runs"), "model", errors)
    datasets, runs = _choices(registry)
    dataset = next((d for d in datasets if str(d.id) == text_field(form, "dataset")), None)
    if dataset is None:
        errors["dataset"] = f"expected one of the completed datasets, got {text_field(form, 'dataset')!r}"
    networks = tuple(s.name for s in list_models()) + ("custom",)
    network = choice_field(form, "network", networks, errors, "lenet")
    argv = ["train", "--dataset", dataset.path if dataset else "", "--out", out,
            "--name", name, "--model", network]
    if network == "custom":
        code = text_field(form, "custom_code")
        problem = _check_custom_code(code)
        if problem:
            errors["custom_code"] = problem
        else:
            argv += ["--set", f"model.custom_path={_save_network(settings, code)}"]
    start = text_field(form, "weights_run")
    if start:
        run = next((r for r in runs if str(r.id) == start), None)
        if run is None:
            errors["weights_run"] = f"expected one of the completed runs, got {start!r}"
        else:
            argv += ["--weights", run.path]
    epochs = int_field(form, "epochs", errors, low=1, high=10000)
    argv += ["--epochs", str(epochs),
             "--batch-size", str(int_field(form, "batch_size", errors, low=1, high=65536)),
             "--lr", f"{float_field(form, 'base_lr', errors, low=1e-9, high=100):g}",
             "--lr-policy", choice_field(form, "policy", LR_POLICIES, errors, "fixed"),
             "--optimizer", choice_field(form, "optimizer", OPTIMIZERS, errors, "sgd"),
             "--seed", str(int_field(form, "seed", errors, low=0, high=2**31 - 1)),
             "--set", f"train.val_interval={int_field(form, 'val_interval', errors, low=0, high=epochs)}",
             "--set", f"train.snapshot_interval={int_field(form, 'snapshot_interval', errors, low=1, high=epochs)}",
             "--set", f"train.lr.gamma={float_field(form, 'gamma', errors, low=0, high=100, default=0.1):g}",
             "--set", f"train.lr.step_size={float_field(form, 'step_size', errors, low=0.1, high=100, default=33):g}",
             "--set", f"train.lr.power={float_field(form, 'power', errors, low=0, high=100, default=1):g}"]
    for flag in ("flip_horizontal", "flip_vertical"):
        if form.get(flag):
            argv += ["--set", f"train.augment.{flag}=true"]
    for flag, high in (("rotation", 180), ("zoom", 0.9), ("translate", 0.9)):
        value = float_field(form, flag, errors, low=0, high=high, default=0)
        if value:
            argv += ["--set", f"train.augment.{flag}={value:g}"]
    argv += ["--class-weight", choice_field(form, "class_weight", CLASS_WEIGHT_MODES, errors,
                                            "none")]
    if form.get("balanced_sampler"):
        argv += ["--sampler", "balanced"]
    if form.get("mlflow"):
        argv += ["--tracking", "mlflow"]
    steps = int_field(form, "steps_per_epoch", errors, low=0, high=10**7, default=0)
    if steps:
        argv += ["--set", f"train.steps_per_epoch={steps}"]
    caps = capabilities()
    mixed = choice_field(form, "mixed_precision", caps.mixed_precision, errors, "auto")
    if mixed != "auto":
        argv += ["--set", f"train.mixed_precision={mixed}"]
    distributed = choice_field(form, "distributed", caps.distributed, errors, "none")
    launcher: list[str] = []
    if distributed != "none" and "distributed" not in errors:
        argv += ["--distributed", distributed]
    if distributed == "horovod" and "distributed" not in errors:
        most, default = _processes_range(caps.gpus)
        launcher = horovod_launcher(int_field(form, "processes", errors, low=2, high=most,
                                              default=default))
    return argv, launcher, name, out, errors


@router.post("/models/new")
async def create_model(request: Request):
    settings = request.app.state.settings
    form = await request.form()
    registry = Registry.open()
    try:
        argv, launcher, name, out, errors = parse_train_form(form, settings, registry)
    finally:
        registry.close()
    if form.get("action") == "lr-find" and "dataset" not in errors:
        lr_dir = os.path.join(settings.folder("lr"), time.strftime("%Y%m%d-%H%M%S"))
        lr_argv = ["lr-find", "--dataset", argv[2], "--out", lr_dir,
                   "--model", argv[argv.index("--model") + 1],
                   "--batch-size", argv[argv.index("--batch-size") + 1], "--steps", "60"]
        job_id = request.app.state.queue.submit("LR finder", "lr-find", lr_argv,
                                                target=lr_dir, target_kind="lr")
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)
    if errors:
        return _page(request, dict(form), errors, status_code=400)
    job_id = request.app.state.queue.submit(f"Train {name}", "train", argv, target=out,
                                            target_kind="run", launcher=launcher)
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

    from vispipe.configs import LRPolicyConfig
    from vispipe.train.policies import lr_at

    errors: dict[str, str] = {}
    q = request.query_params
    cfg = LRPolicyConfig(
        policy=choice_field(q, "policy", LR_POLICIES, errors, "fixed"),
        base_lr=float_field(q, "base_lr", errors, low=1e-9, high=100, default=0.01),
        gamma=float_field(q, "gamma", errors, low=0, high=100, default=0.1),
        power=float_field(q, "power", errors, low=0, high=100, default=1.0),
        step_size=float_field(q, "step_size", errors, low=0.1, high=100, default=33.0))
    if errors:
        return JSONResponse({"errors": errors}, status_code=400)
    total = 200
    steps = np.arange(total)
    try:
        values = lr_at(cfg, total, steps)
    except ValueError as error:
        return JSONResponse({"errors": {"policy": str(error)}}, status_code=400)
    return {"percent": (steps * 100 / total).tolist(), "lr": [float(v) for v in values]}
