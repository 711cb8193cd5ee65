"""What the pages show: durations, status lines and the home panes.

Example:

```python
format_duration(307)  # "5 minutes, 7 seconds"
```
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from fastapi import HTTPException

from vispipe.registry import Entry, Registry
from vispipe.ui.jobs import Job, read_job

__all__ = ["format_duration", "HomeItem", "home_items", "jobs_by_target", "entry_status",
           "entry_or_404", "load_entry"]

_STATUS_WORDS = {"completed": "Done", "failed": "Failed", "aborted": "Aborted",
                 "interrupted": "Interrupted"}


def format_duration(seconds: float) -> str:
    """DIGITS-style duration: "5 minutes, 7 seconds", "1 hour, 2 minutes"."""
    seconds = int(round(max(0.0, seconds)))
    parts = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {unit}{'s' if count != 1 else ''}")
    return ", ".join(parts[:2]) or "0 seconds"


def _parse(stamp: str | None) -> _dt.datetime | None:
    return _dt.datetime.fromisoformat(stamp) if stamp else None


def _elapsed(entry: Entry) -> float:
    start = _parse(entry.created)
    end = _parse(entry.finished) or _dt.datetime.now(_dt.timezone.utc)
    return (end - start).total_seconds() if start else 0.0


@dataclass(frozen=True)
class HomeItem:
    """One row of a home pane."""

    entry: Entry
    job: Job | None
    status: str
    line: str

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")


def jobs_by_target(registry: Registry) -> dict[str, Job]:
    """The newest job of each target folder."""
    latest: dict[str, Job] = {}
    for entry in registry.list("job"):  # Newest first.
        target = entry.params.get("target")
        if target and target not in latest:
            latest[target] = read_job(entry)
    return latest


def entry_status(entry: Entry, job: Job | None) -> str:
    """The status to show for a dataset or run entry given its newest job."""
    if job and (job.status in ("queued", "running") or job.entry.id > entry.id):
        return job.status  # A resume is newer than the entry itself.
    if job and job.status == "aborted" and entry.status == "interrupted":
        return "aborted"  # The CLI saw a SIGTERM; the UI knows who sent it.
    return entry.status


def _line(status: str, entry: Entry, job: Job | None) -> str:
    if status == "queued":
        return "Queued"
    if status == "running":
        return "Running"
    source = job.entry if job and job.entry.id > entry.id else entry
    return f"{_STATUS_WORDS.get(status, status.title())} after {format_duration(_elapsed(source))}"


def home_items(registry: Registry, kind: str) -> list[HomeItem]:
    """Rows of the Datasets ("dataset") or Models ("run") pane, newest first.

    Registry entries written by the CLI and by UI jobs appear alike; a UI job
    that has not yet created its entry (still queued, or starting) appears
    as a row of its own.
    """
    latest = jobs_by_target(registry)
    items, seen = [], set()
    for entry in registry.list(kind):
        if entry.path in seen:
            continue  # An older entry of a folder that was written again.
        seen.add(entry.path)
        job = latest.get(entry.path)
        status = entry_status(entry, job)
        items.append(HomeItem(entry, job, status, _line(status, entry, job)))
    wanted = "dataset" if kind == "dataset" else "run"
    for target, job in latest.items():
        if job.target_kind == wanted and target not in seen and job.status in ("queued", "running", "failed", "aborted"):
            items.append(HomeItem(job.entry, job, job.status, _line(job.status, job.entry, job)))
    items.sort(key=lambda item: item.entry.created, reverse=True)
    return items




def entry_or_404(registry: Registry, entry_id: int, kind: str | None = None) -> Entry:
    """Registry entry `entry_id`; HTTP 404 when there is none or it is not a `kind`."""
    try:
        entry = registry.get(entry_id)
    except KeyError as error:
        raise HTTPException(404, str(error)) from None
    if kind and entry.kind != kind:
        raise HTTPException(404, f"Registry entry {entry_id} is a {entry.kind}, not a {kind}.")
    return entry


def load_entry(entry_id: int, kind: str | None = None) -> Entry:
    """`entry_or_404` on a registry opened for this call alone."""
    registry = Registry.open()
    try:
        return entry_or_404(registry, entry_id, kind)
    finally:
        registry.close()
