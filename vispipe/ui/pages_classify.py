"""Classify many images: upload a list or an archive, a background job, the results page.

Example:

```python
app.include_router(router)
```
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
import time
import uuid

from fastapi import APIRouter, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, RedirectResponse, Response

from vispipe.configs import EvaluateConfig
from vispipe.registry import Entry, Registry
from vispipe.train.run_folder import RunFolder, read_run_info
from vispipe.ui.classify_many import (PREDICTIONS_FILE, BadUpload, classify_argv, input_paths,
                                      prepare_request, read_request, read_results)
from vispipe.ui.forms import int_field
from vispipe.ui.jobs import Job, log_tail, read_job
from vispipe.ui.settings import UnsafeInputError, confine
from vispipe.ui.templating import render
from vispipe.ui.uploads import read_limited
from vispipe.ui.views import entry_or_404, load_entry

__all__ = ["router"]

router = APIRouter()

# The results page lists this many images; the CSV download has them all.
_ROWS_SHOWN = 1000
_THUMB_PX = 96


def _classes(entry: Entry) -> list[str]:
    """The class names of a completed run (its `RunInfo`)."""
    if entry.status != "completed" or not RunFolder(entry.path).exists():
        raise HTTPException(409, f"Model {entry.name!r} is {entry.status}; expected a completed "
                                 "run to classify with.")
    try:
        return read_run_info(entry.path).classes
    except ValueError as error:
        raise HTTPException(409, str(error)) from None


@router.post("/runs/{entry_id}/classify-many")
async def classify_many(request: Request, entry_id: int, inputs: UploadFile):
    """Queues `vispipe classify` on an uploaded list or archive; redirects to its results."""
    settings = request.app.state.settings
    entry = load_entry(entry_id, "run")
    classes = _classes(entry)
    form = await request.form()
    errors: dict[str, str] = {}
    top_k = int_field(form, "top_k", errors, low=1, high=len(classes), default=min(5, len(classes)))
    if errors:
        raise HTTPException(400, f"top_k: {errors['top_k']}.")
    data = await read_limited(inputs, settings.max_upload_bytes)
    folder = os.path.join(entry.path, f"classify-{time.strftime('%Y%m%d-%H%M%S')}-"
                                      f"{uuid.uuid4().hex[:6]}")
    try:
        # Unpacking may take seconds: in a thread, so other requests are served meanwhile.
        req = await asyncio.to_thread(prepare_request, data, inputs.filename or "upload",
                                      classes, settings.data_roots, folder,
                                      settings.max_upload_bytes, top_k)
    except BadUpload as error:
        raise HTTPException(error.status, str(error)) from None
    except PermissionError as error:
        raise HTTPException(409, f"Cannot write the results into the run folder: {error}") from None
    job_id = request.app.state.queue.submit(
        f"Classify {req.count} images with {entry.name}", "classify",
        classify_argv(entry.path, folder), config={"evaluate": EvaluateConfig(top_k=req.top_k)},
        target=folder, target_kind="classify")
    return RedirectResponse(f"/runs/{entry_id}/classify/{job_id}", status_code=303)


def _request_job(registry: Registry, entry: Entry, job_id: int) -> Job:
    job = read_job(entry_or_404(registry, job_id, "job"))
    if (job.verb != "classify"
            or os.path.dirname(job.target) != entry.path):
        raise HTTPException(404, f"Job {job_id} is not a classification of model {entry.id}.")
    return job


def _lookup(entry_id: int, job_id: int) -> tuple[Entry, Job]:
    registry = Registry.open()
    try:
        entry = entry_or_404(registry, entry_id, "run")
        return entry, _request_job(registry, entry, job_id)
    finally:
        registry.close()


@router.get("/runs/{entry_id}/classify/{job_id}")
def results_page(request: Request, entry_id: int, job_id: int):
    """Progress while the job runs; then the per-image table, accuracy, confusion
    matrix and the most probable images of each predicted class."""
    entry, job = _lookup(entry_id, job_id)
    classes = _classes(entry)
    try:
        req = read_request(job.target)
    except FileNotFoundError:
        raise HTTPException(404, f"The request folder of job {job_id} was deleted.") from None
    try:
        results = read_results(job.target, classes) if job.status == "completed" else None
    except ValueError as error:
        raise HTTPException(409, str(error)) from None
    return render(request, "classify_many.html", entry=entry, job=job, req=req, results=results,
                  rows_shown=_ROWS_SHOWN, log=log_tail(job))


@router.get("/runs/{entry_id}/classify/{job_id}/predictions.csv")
def predictions_csv(entry_id: int, job_id: int):
    _, job = _lookup(entry_id, job_id)
    path = os.path.join(job.target, PREDICTIONS_FILE)
    if not os.path.isfile(path):
        raise HTTPException(404, f"Job {job_id} has not written {PREDICTIONS_FILE} (yet).")
    return FileResponse(path, media_type="text/csv", filename=f"predictions-{job_id}.csv")


@functools.lru_cache(maxsize=8)
def _paths(folder: str, mtime_ns: int) -> tuple[str, ...]:
    del mtime_ns  # Part of the cache key only: a rewritten CSV is read again.
    return tuple(input_paths(folder))


@router.get("/runs/{entry_id}/classify/{job_id}/image/{index}.png")
def thumbnail(request: Request, entry_id: int, job_id: int, index: int):
    """A small PNG of image `index` of a request (archives' or the data roots' files only)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    _, job = _lookup(entry_id, job_id)
    csv_path = os.path.join(job.target, PREDICTIONS_FILE)
    if not os.path.isfile(csv_path):
        raise HTTPException(404, f"Job {job_id} has not written {PREDICTIONS_FILE} (yet).")
    paths = _paths(job.target, os.stat(csv_path).st_mtime_ns)
    if not 0 <= index < len(paths):
        raise HTTPException(404, f"Image index: expected 0 to {len(paths) - 1}, got {index}.")
    roots = [os.path.realpath(job.target)] + request.app.state.settings.data_roots
    try:
        path = confine(paths[index], roots, "image")
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.thumbnail((_THUMB_PX, _THUMB_PX))
            if image.mode not in ("L", "RGB", "RGBA"):
                image = image.convert("RGBA")
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
    except UnsafeInputError as error:
        raise HTTPException(403, str(error)) from None
    except Image.DecompressionBombError as error:
        raise HTTPException(400, f"Image {index} has too many pixels to show: {error}") from None
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise HTTPException(404, f"Image {index} cannot be shown: {error}") from None
    return Response(buffer.getvalue(), media_type="image/png",
                    headers={"Cache-Control": "max-age=3600"})
