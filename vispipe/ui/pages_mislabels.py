"""Likely mislabelled training images of a model: start the search, see the images,
download the CSV to fix labels from.

The search is a background job (`vispipe mislabels --run RUN`, k trainings);
its outputs live in `RUN/mislabels/` (`vispipe.evaluate.mislabels`).

Example:

```python
app.include_router(router)
```
"""

from __future__ import annotations

import json
import os

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse

from vispipe.evaluate.mislabels import MISLABELS_DIR, MislabelsSettings
from vispipe.registry import Registry
from vispipe.ui.forms import int_field
from vispipe.ui.jobs import log_tail, read_job
from vispipe.ui.templating import render
from vispipe.ui.views import entry_or_404, load_entry

__all__ = ["router", "ROWS_SHOWN"]

router = APIRouter()

ROWS_SHOWN = 200  # Images on the page; the CSV has every flagged one.
_MAX_FOLDS = 10


def _folder(run_dir: str) -> str:
    return os.path.join(run_dir, MISLABELS_DIR)


def _job(registry: Registry, run_dir: str):
    """The newest mislabels job of the run, if any."""
    jobs = [read_job(e) for e in registry.list("job")]
    return next((j for j in jobs if j.verb == "mislabels" and j.target == _folder(run_dir)), None)


@router.get("/runs/{entry_id}/mislabels")
def mislabels_page(request: Request, entry_id: int):
    registry = Registry.open()
    try:
        entry = entry_or_404(registry, entry_id, "run")
        job = _job(registry, entry.path)
    finally:
        registry.close()
    report = None
    path = os.path.join(_folder(entry.path), "label_issues.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    running = job is not None and job.status in ("queued", "running")
    return render(request, "mislabels.html", entry=entry, report=report, job=job,
                  running=running, log=log_tail(job) if job else "", rows_shown=ROWS_SHOWN)


@router.post("/runs/{entry_id}/mislabels")
async def start_mislabels(request: Request, entry_id: int):
    """Queues `vispipe mislabels` on the run (k-fold trainings); back to the page."""
    entry = load_entry(entry_id, "run")
    if entry.status != "completed":
        raise HTTPException(409, f"Model {entry.name!r} is {entry.status}; finish training first.")
    form = await request.form()
    errors: dict[str, str] = {}
    folds = int_field(form, "folds", errors, low=2, high=_MAX_FOLDS, default=3)
    epochs = int_field(form, "epochs", errors, low=0, high=10_000, default=0)
    if errors:
        raise HTTPException(400, "; ".join(f"{k}: {v}" for k, v in errors.items()) + ".")
    request.app.state.queue.submit(
        f"Likely mislabels of {entry.name}", "mislabels",
        ["mislabels", "--run", entry.path],
        config={"mislabels": MislabelsSettings(folds=folds, epochs=epochs)},
        target=_folder(entry.path), target_kind="mislabels")
    return RedirectResponse(f"/runs/{entry_id}/mislabels", status_code=303)


@router.get("/runs/{entry_id}/mislabels.csv")
def mislabels_csv(entry_id: int):
    entry = load_entry(entry_id, "run")
    path = os.path.join(_folder(entry.path), "label_issues.csv")
    if not os.path.isfile(path):
        raise HTTPException(404, "No likely mislabels were computed for this model yet.")
    return FileResponse(path, media_type="text/csv", filename=f"{entry.name}-label-issues.csv")


@router.get("/runs/{entry_id}/mislabels/image/{rank}.png")
def mislabel_image(entry_id: int, rank: int):
    entry = load_entry(entry_id, "run")
    # A number names the file: nothing from the request reaches the path as text.
    path = os.path.join(_folder(entry.path), "images", f"{rank:04d}.png")
    if rank < 1 or not os.path.isfile(path):
        raise HTTPException(404, f"No flagged image of rank {rank}.")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "max-age=3600"})
