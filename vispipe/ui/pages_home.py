"""Home (Datasets and Models panes) and job pages: status, log, abort, resume, delete.

Example:

```python
app.include_router(router)
```
"""

from __future__ import annotations

import asyncio
import os
import shutil

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse

from vispipe.registry import Registry
from vispipe.ui.forms import local_path_field
from vispipe.ui.jobs import log_tail, read_job, resume_argv, resume_config
from vispipe.ui.settings import is_within
from vispipe.ui.templating import render
from vispipe.ui.views import entry_or_404, home_items

__all__ = ["router"]

router = APIRouter()


def _entry_for(registry: Registry, kind: str, path: str):
    return next((e for e in registry.list(kind) if e.path == path), None)


@router.get("/")
def home(request: Request):
    registry = Registry.open()
    try:
        panes = {}
        for kind, title in (("dataset", "Datasets"), ("run", "Models")):
            items = [i for i in home_items(registry, kind)
                     if i.active or os.path.exists(i.entry.path)]
            panes[title] = ([i for i in items if i.active], [i for i in items if not i.active])
    finally:
        registry.close()
    return render(request, "home.html", panes=panes)


def _target_url(registry: Registry, job) -> str | None:
    """The page of what the job writes, once the CLI has registered it."""
    if job.target_kind == "classify":  # Its results page shows its progress too.
        run = _entry_for(registry, "run", os.path.dirname(job.target))
        return f"/runs/{run.id}/classify/{job.id}" if run else None
    kind = {"run": "run", "dataset": "dataset"}.get(job.target_kind)
    entry = _entry_for(registry, kind, job.target) if kind else None
    if entry is None or (entry.id < job.id and job.verb != "resume"):
        return None  # Not yet, or an older entry of a folder this job rewrites.
    return f"/{kind}s/{entry.id}"


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: int):
    registry = Registry.open()
    try:
        job = _job(registry, job_id)
        url = _target_url(registry, job)
        if url:
            return RedirectResponse(url, status_code=303)
    finally:
        registry.close()
    files = []
    if job.target_kind == "lr" and os.path.isfile(os.path.join(job.target, "lr_find.png")):
        files.append("lr_find.png")
    return render(request, "job.html", job=job, log=log_tail(job), files=files,
                  resume=resume_argv(job))


@router.get("/jobs/{job_id}/status")
def job_status(job_id: int):
    registry = Registry.open()
    try:
        job = _job(registry, job_id)
        url = _target_url(registry, job)
    finally:
        registry.close()
    return JSONResponse({"id": job.id, "status": job.status, "log": log_tail(job),
                         "summary": job.entry.summary, "page": url})


@router.get("/jobs/{job_id}/file/{name}")
def job_file(job_id: int, name: str):
    from fastapi.responses import FileResponse

    registry = Registry.open()
    try:
        job = _job(registry, job_id)
    finally:
        registry.close()
    if name not in ("lr_find.png", "lr_find.json"):
        raise HTTPException(404, f"Job {job_id} has no file {name!r}.")
    path = os.path.join(job.target, name)
    if not os.path.isfile(path):
        raise HTTPException(404, f"Job {job_id} has not written {name} (yet).")
    return FileResponse(path)


@router.post("/jobs/{job_id}/abort")
async def abort(request: Request, job_id: int):
    """Aborts a job; back to the form's `next` page of this server (default: the job's)."""
    back = local_path_field(await request.form(), "next", f"/jobs/{job_id}")
    try:
        await asyncio.to_thread(request.app.state.queue.abort, job_id)
    except KeyError as error:
        raise HTTPException(404, str(error)) from None
    except ValueError as error:
        raise HTTPException(409, str(error)) from None
    return RedirectResponse(back, status_code=303)


@router.post("/jobs/{job_id}/resume")
async def resume(request: Request, job_id: int):
    form = await request.form()
    epochs = str(form.get("epochs") or "")
    if epochs and not epochs.isdigit():
        raise HTTPException(400, f"Epochs: expected a whole number, got {epochs!r}.")
    registry = Registry.open()
    try:
        job = _job(registry, job_id)
    finally:
        registry.close()
    argv = resume_argv(job)
    if argv is None:
        raise HTTPException(409, f"Job {job_id} ({job.status}) cannot be resumed: "
                                 "expected an interrupted or aborted training job with a checkpoint.")
    # A Horovod run resumes under the same launcher, with as many ranks.
    new_id = request.app.state.queue.submit(f"Resume {job.entry.name}", "resume", argv,
                                            config=resume_config(int(epochs) if epochs else None),
                                            target=job.target, target_kind="run",
                                            launcher=job.entry.params.get("launcher"))
    return RedirectResponse(f"/jobs/{new_id}", status_code=303)


@router.post("/delete/{entry_id}")
def delete(request: Request, entry_id: int):
    """Deletes a finished dataset or run that the UI wrote.

    Its folder goes, and with it every registry entry of that folder and the
    jobs (with their job folders) that wrote into it: training, evaluation,
    classification.
    """
    settings = request.app.state.settings
    parents = [os.path.realpath(settings.folder(kind)) for kind in ("datasets", "runs")]
    registry = Registry.open()
    try:
        entry = entry_or_404(registry, entry_id)
        path = entry.params.get("target") if entry.kind == "job" else entry.path
        if not path or os.path.dirname(os.path.realpath(path)) not in parents:
            raise HTTPException(403, "Only datasets and models the UI created (in "
                                     f"{' or '.join(parents)}) can be deleted; got {path!r}.")
        jobs = [j for j in map(read_job, registry.list("job"))
                if j.target and is_within(j.target, path)]
        busy = [j for j in jobs if j.status in ("queued", "running")]
        if busy:
            raise HTTPException(409, f"{path} is in use by job {busy[0].id}: abort it first.")
        jobs_folder = os.path.realpath(settings.folder("jobs"))
        folders = [path] + [j.entry.path for j in jobs
                            if os.path.dirname(os.path.realpath(j.entry.path)) == jobs_folder]
        for folder in folders:
            try:
                shutil.rmtree(folder)
            except FileNotFoundError:
                pass  # Already gone: its entries still go.
            except OSError as error:
                raise HTTPException(500, f"Cannot delete {folder}: {error}") from None
        for stale in [e for e in registry.list() if e.kind != "job" and e.path == path]:
            registry.delete(stale.id)
        for job in jobs:
            registry.delete(job.id)
    finally:
        registry.close()
    return RedirectResponse("/", status_code=303)


def _job(registry: Registry, job_id: int):
    try:
        entry = registry.get(job_id)
    except KeyError as error:
        raise HTTPException(404, str(error)) from None
    if entry.kind != "job":
        raise HTTPException(404, f"Registry entry {job_id} is a {entry.kind}, not a job.")
    return read_job(entry)
