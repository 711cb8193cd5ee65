"""The model page: live training, metrics, evaluation, classify, export, serve, TF.js.

Example:

```python
app.include_router(router)
```
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import threading
import time
import zipfile

from fastapi import APIRouter, HTTPException, Request, UploadFile
from fastapi.responses import (FileResponse, JSONResponse, RedirectResponse, Response,
                               StreamingResponse)

from vispipe.configs import EvaluateConfig
from vispipe.export.options import ExportOptions, installed_formats
from vispipe.registry import Entry, Registry
from vispipe.train.run_folder import RunFolder, read_run_info
from vispipe.train.run_info import RunInfo
from vispipe.ui.config_form import options
from vispipe.ui.forms import choice_field, int_field
from vispipe.ui.jobs import Job, log_tail, read_job, resume_argv
from vispipe.ui.pretrained import pretrained_source
from vispipe.ui.settings import is_within
from vispipe.ui.templating import render
from vispipe.ui.uploads import read_limited, save_image
from vispipe.ui.views import entry_or_404, entry_status, load_entry

__all__ = ["router", "export_available"]

router = APIRouter()

# The export form's first choices; the formats offered are the installed ones (`installed_formats`).
_EXPORT_CHECKED = ("savedmodel", "tfjs")
_FINAL = ("completed", "failed", "interrupted", "aborted")
_models: dict[tuple[str, float], object] = {}
_models_lock = threading.Lock()


def _jobs_of(registry: Registry, path: str) -> list[Job]:
    """The jobs of a run: training, evaluations, classifications, exports and servers,
    newest first."""
    jobs = []
    for job in map(read_job, registry.list("job")):
        if (job.target == path or os.path.dirname(job.target) == path
                or (job.verb in ("export", "serve") and _job_run(job) == path)):
            jobs.append(job)
    return jobs


def export_available() -> bool:
    """Whether the `vispipe export` verb is installed."""
    from importlib.metadata import entry_points

    return any(e.name == "export" for e in entry_points(group="vispipe.commands"))


@router.get("/runs/{entry_id}")
def run_page(request: Request, entry_id: int):
    registry = Registry.open()
    try:
        entry = entry_or_404(registry, entry_id, "run")
        jobs = _jobs_of(registry, entry.path)
    finally:
        registry.close()
    info, problem = _run_info(entry.path)
    run = RunFolder(entry.path)
    train_job = next((j for j in jobs if j.target == entry.path and j.target_kind == "run"), None)
    status = entry_status(entry, train_job)
    evaluations = {}
    for split in ("test", "val"):
        path = run.file(f"eval-{split}", "metrics.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                evaluations[split] = json.load(f)
    exports = [j for j in jobs if j.verb == "export"]
    reports = {job.id: _benchmark(job.target) for job in exports}
    return render(request, "run.html", entry=entry, info=info, problem=problem,
                  pretrained=pretrained_source(info, request.app.state.settings) if info else None,
                  status=status, job=train_job,
                  log=log_tail(train_job) if train_job else "",
                  resume=resume_argv(train_job) if train_job else None,
                  evaluations=evaluations, exports=exports, reports=reports,
                  evaluating=[j for j in jobs if j.verb == "evaluate"
                              and j.status in ("queued", "running")],
                  serving=[j for j in jobs if j.verb == "serve"],
                  classifications=[j for j in jobs if j.verb == "classify"],
                  eval_splits=options("evaluate.splits")[::-1],  # test first
                  export_formats=installed_formats(), export_checked=_EXPORT_CHECKED,
                  serve_port=_default_rest_port() if reports else None, export_ok=export_available())


def _run_info(run_dir: str) -> tuple[RunInfo | None, str]:
    """The run's `RunInfo`, or None and why not (not written yet, an older format)."""
    run = RunFolder(run_dir)
    if not run.exists():
        return None, ""
    try:
        return run.read_run_info(), ""
    except ValueError as error:
        return None, str(error)


def _default_rest_port() -> int | None:
    """`ServerConfig`'s default REST port; None when the serving stage is not installed."""
    try:
        from vispipe.serving.config import ServerConfig
    except ImportError:
        return None
    return next(f.default for f in dataclasses.fields(ServerConfig) if f.name == "rest_port")


def _benchmark(export_dir: str):
    """The export's benchmark (`summarize`), drawing its PNG on the first visit.

    Returns:
        The `BenchmarkReport`; None while there is no report yet; the error
        text when the report cannot be read.
    """
    from vispipe.export.benchmark import REPORT_FILE, summarize

    if not os.path.isfile(os.path.join(export_dir, REPORT_FILE)):
        return None
    try:
        return summarize(export_dir, plot=not os.path.isfile(os.path.join(export_dir,
                                                                          "benchmark.png")))
    except (OSError, ValueError) as e:  # A damaged report: the page still shows the rest.
        return f"{type(e).__name__}: {e}"


@router.get("/runs/{entry_id}/events")
async def run_events(request: Request, entry_id: int):
    """Server-sent events: each metrics.jsonl record ("metric"), then the status ("status")."""
    entry = load_entry(entry_id, "run")
    run = RunFolder(entry.path)

    async def stream():
        offset, last = 0, None
        while True:
            if os.path.isfile(run.metrics_path):
                with open(run.metrics_path, encoding="utf-8") as f:
                    f.seek(offset)
                    chunk = f.read()
                # Only whole lines: the trainer may be writing the last one.
                complete = chunk[:chunk.rfind("\n") + 1]
                offset += len(complete.encode("utf-8"))
                for line in complete.splitlines():
                    if line.strip():
                        yield f"event: metric\ndata: {line}\n\n"
            state = _live_status(entry)
            if state != last:
                yield f"event: status\ndata: {json.dumps(state)}\n\n"
                last = state
            if state["status"] in _FINAL or await request.is_disconnected():
                return
            await asyncio.sleep(0.5)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def _live_status(entry: Entry) -> dict:
    registry = Registry.open()
    try:
        jobs = [j for j in _jobs_of(registry, entry.path) if j.target_kind == "run"]
        entry = registry.get(entry.id)
    finally:
        registry.close()
    job = jobs[0] if jobs else None
    if job and (job.status in ("queued", "running") or job.entry.id > entry.id):
        return {"status": job.status, "log": log_tail(job, 8)}
    return {"status": entry.status, "log": log_tail(job, 8) if job else ""}


def _cached_model(run_dir: str):
    from vispipe.train.run_folder import load_run_model

    run = RunFolder(run_dir)
    path = run.model_path if os.path.isfile(run.model_path) else run.best_path
    key = (run_dir, os.path.getmtime(path) if os.path.isfile(path) else 0.0)
    with _models_lock:
        if key not in _models:
            which = "final" if os.path.isfile(run.model_path) else "best"
            _models.clear()  # One model at a time keeps the UI's memory small.
            _models[key] = load_run_model(run_dir, which=which)
        return _models[key]


@router.post("/runs/{entry_id}/classify")
async def classify_one(request: Request, entry_id: int, image: UploadFile):
    """The most probable classes of one uploaded image (JSON).

    Form fields: `top` (classes to return, default 5; the TF.js page asks
    for all of them), `visualize=1` (adds per-layer statistics) and
    `explain=1` (adds a Grad-CAM overlay for the top class, as a data URL).
    """
    settings = request.app.state.settings
    entry = load_entry(entry_id, "run")
    form = await request.form()
    errors: dict[str, str] = {}
    top = int_field(form, "top", errors, low=1, high=10_000, default=5)
    if errors:
        raise HTTPException(400, f"top: {errors['top']}.")
    data = await read_limited(image, settings.max_upload_bytes)
    return await asyncio.to_thread(_classify_sync, entry.path, image.filename, data, settings,
                                   top, bool(form.get("visualize")), bool(form.get("explain")))


def _explain(model, path: str, run_dir: str) -> dict:
    """Grad-CAM of the top class over the image, as the page shows it."""
    import base64

    from vispipe.data.images import load_image
    from vispipe.evaluate.gradcam import GradCam, overlay_png

    image, _ = load_image(path, read_run_info(run_dir).image)
    try:
        result = GradCam(model)(image[None])
    except ValueError as error:  # A network without a spatial layer.
        return {"error": str(error)}
    png = overlay_png(image, result.heatmaps[0])
    return {"image": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
            "layer": result.layer, "class_id": int(result.class_ids[0])}


def _classify_sync(run_dir: str, filename: str | None, data: bytes, settings, top: int,
                   with_layers: bool, explain: bool = False) -> JSONResponse:
    from vispipe.evaluate.classify import classify

    path = save_image(filename, data, settings)  # Decoding checks stay off the event loop.
    try:
        info = read_run_info(run_dir)
        model = _cached_model(run_dir)
    except (FileNotFoundError, ValueError) as error:
        raise HTTPException(409, str(error)) from None
    started = time.perf_counter()
    prediction = classify(model, path, top_k=top, classes=info.classes,
                          image_options=info.image, progress=False)[0]
    body = {"top": prediction.top, "error": prediction.error, "note": prediction.note,
            "ms": round(1000 * (time.perf_counter() - started), 1)}
    if explain and not prediction.error:
        body["gradcam"] = _explain(model, path, run_dir)
    if with_layers and not prediction.error:
        from vispipe.evaluate import visualize

        out = os.path.join(os.path.dirname(path), os.path.basename(path) + ".layers")
        stats = visualize(run_dir, path, out)
        body["layers"] = [{"name": s.name, "shape": list(s.shape), "mean": s.mean,
                           "std": s.std, "params": s.params} for s in stats]
    return JSONResponse(body)


@router.post("/runs/{entry_id}/evaluate")
async def evaluate(request: Request, entry_id: int):
    """Queues `vispipe evaluate` of one split (`evaluate.splits`), written into the run."""
    form = await request.form()
    errors: dict[str, str] = {}
    split = choice_field(form, "split", tuple(options("evaluate.splits")), errors, "test")
    if errors:
        raise HTTPException(400, f"Split: {errors['split']}.")
    entry = load_entry(entry_id, "run")
    request.app.state.queue.submit(f"Evaluate {entry.name} ({split})", "evaluate",
                                   ["evaluate", "--run", entry.path],
                                   config={"evaluate": EvaluateConfig(splits=[split])},
                                   target=os.path.join(entry.path, f"eval-{split}"),
                                   target_kind="eval")
    return RedirectResponse(f"/runs/{entry_id}#evaluation", status_code=303)


_RUN_FILES = {"curves.png", "eval-test/confusion_matrix.png", "eval-val/confusion_matrix.png",
              "eval-test/top_losses.png", "eval-val/top_losses.png",
              "eval-test/uncertain.png", "eval-val/uncertain.png",
              "eval-test/top_losses_gradcam.png", "eval-val/top_losses_gradcam.png"}


@router.get("/runs/{entry_id}/file/{name:path}")
def run_file(entry_id: int, name: str):
    if name not in _RUN_FILES:
        raise HTTPException(404, f"Not a file the model page shows: {name!r}.")
    entry = load_entry(entry_id, "run")
    path = os.path.join(entry.path, name)
    if not os.path.isfile(path):
        raise HTTPException(404, f"{name} does not exist (yet).")
    return FileResponse(path)


@router.post("/runs/{entry_id}/export")
async def export(request: Request, entry_id: int):
    """Queues `vispipe export` of the checked formats (the `export` section, `ExportOptions`)."""
    form = await request.form()
    formats = [f for f in installed_formats() if form.get(f"format_{f}")]
    if not formats:
        raise HTTPException(400, f"Export: expected at least one format of "
                                 f"{', '.join(installed_formats())}.")
    if not export_available():
        raise HTTPException(409, "The export stage is not installed (`vispipe export` is missing).")
    errors: dict[str, str] = {}
    limit = int_field(form, "verify_limit", errors, low=0, high=10**7,
                      default=ExportOptions().verify_limit)
    if errors:
        raise HTTPException(400, f"Verify limit: {errors['verify_limit']}.")
    entry = load_entry(entry_id, "run")
    out = os.path.join(request.app.state.settings.folder("exports"),
                       f"{entry_id}-{time.strftime('%Y%m%d-%H%M%S')}")
    job_id = request.app.state.queue.submit(
        f"Export {entry.name}", "export", ["export", "--run", entry.path, "--out", out],
        config={"export": ExportOptions(formats=tuple(formats), verify_limit=limit)},
        target=out, target_kind="export")
    _set_run(job_id, entry.path)
    return RedirectResponse(f"/runs/{entry_id}#export", status_code=303)


def _set_run(job_id: int, run_dir: str) -> None:
    """Records which run an export or serve job belongs to (in its job folder)."""
    registry = Registry.open()
    try:
        folder = registry.get(job_id).path
    finally:
        registry.close()
    with open(os.path.join(folder, "run.txt"), "w", encoding="utf-8") as f:
        f.write(run_dir)


def _export_job(registry: Registry, job_id: int) -> Job:
    job = read_job(entry_or_404(registry, job_id, "job"))
    if job.verb != "export":
        raise HTTPException(404, f"Job {job_id} is not an export.")
    return job


def _export_path(job: Job, name: str) -> str:
    root = os.path.realpath(job.target)
    path = os.path.realpath(os.path.join(root, name))
    if path == root or not is_within(path, root) or not os.path.isfile(path):
        raise HTTPException(404, f"Export {job.id} has no file {name!r}.")
    return path


@router.get("/exports/{job_id}/file/{name:path}")
def export_file(job_id: int, name: str):
    registry = Registry.open()
    try:
        job = _export_job(registry, job_id)
    finally:
        registry.close()
    return FileResponse(_export_path(job, name))


@router.get("/exports/{job_id}.zip")
def export_zip(job_id: int):
    registry = Registry.open()
    try:
        job = _export_job(registry, job_id)
    finally:
        registry.close()
    if job.status != "completed" and not os.path.isdir(job.target):
        raise HTTPException(409, f"Export {job_id} is {job.status}; no folder to download.")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder, _, files in os.walk(job.target):  # Symlinked folders are not entered.
            for name in files:
                path = os.path.join(folder, name)
                # The export's own files only: a symlink could point anywhere.
                if not os.path.islink(path) and os.path.isfile(path):
                    archive.write(path, os.path.relpath(path, os.path.dirname(job.target)))
    return Response(buffer.getvalue(), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="export-{job_id}.zip"'})


@router.get("/exports/{job_id}/tfjs")
def tfjs_page(request: Request, job_id: int):
    registry = Registry.open()
    try:
        job = _export_job(registry, job_id)
        run = next((e for e in registry.list("run") if e.path == _job_run(job)), None)
    finally:
        registry.close()
    variants = [q for q in ("float32", "float16", "uint8")
                if os.path.isfile(os.path.join(job.target, "tfjs", q, "model.json"))]
    return render(request, "tfjs.html", job=job, run=run, variants=variants)


def _job_run(job: Job) -> str:
    try:
        with open(os.path.join(job.entry.path, "run.txt"), encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


@router.post("/exports/{job_id}/serve")
async def serve(request: Request, job_id: int):
    """Queues `vispipe serve --config` (a `ServerConfig`) of an export's SavedModel."""
    from vispipe.serving.config import ServerConfig

    form = await request.form()
    port = str(form.get("port") or "8501")
    if not port.isdigit() or not 1024 <= int(port) <= 65535:
        raise HTTPException(400, f"Port: expected a number from 1024 to 65535, got {port!r}.")
    registry = Registry.open()
    try:
        job = _export_job(registry, job_id)
        run = next((e for e in registry.list("run") if e.path == _job_run(job)), None)
    finally:
        registry.close()
    models_config = os.path.join(job.target, "savedmodel", "models.config")
    if not os.path.isfile(models_config):
        raise HTTPException(409, f"Export {job_id} has no SavedModel (savedmodel/models.config).")
    # REST only, on this machine only, as the page's address says. The token
    # reaches the server in its environment, never in a file.
    config = ServerConfig(model_config_file=models_config, rest_port=int(port), grpc_port=None,
                          host="127.0.0.1")
    serve_id = request.app.state.queue.submit(f"Serve export {job_id} on :{port}", "serve",
                                              ["serve"], config=config,
                                              target=f"http://127.0.0.1:{port}",
                                              target_kind="serve")
    _set_run(serve_id, _job_run(job))
    return RedirectResponse(f"/runs/{run.id}#serve" if run else f"/jobs/{serve_id}", status_code=303)
