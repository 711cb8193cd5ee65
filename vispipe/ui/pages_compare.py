"""Runs side by side, as DIGITS users compare jobs: curves overlaid, settings in
columns with the ones that differ highlighted.

`GET /compare?run=3&run=5` (the Models pane's "Compare" button sends the ticked runs).

Example:

```python
app.include_router(router)
```
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request

from vispipe.registry import Entry, Registry
from vispipe.train.run_folder import RunFolder
from vispipe.train.run_info import RunInfo
from vispipe.ui.templating import render
from vispipe.ui.views import entry_or_404

__all__ = ["router", "MAX_RUNS", "flatten", "setting_rows"]

router = APIRouter()

MAX_RUNS = 8
_PALETTE = ("#1f6feb", "#d97706", "#2e7d32", "#c62828", "#7c3aed", "#0891b2", "#be185d",
            "#4d7c0f")
_CURVES = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")


@dataclass
class ComparedRun:
    """One column of the page."""

    entry: Entry
    color: str
    info: RunInfo
    epochs: list[dict[str, Any]]
    settings: dict[str, str]


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested settings as `{"train.lr.policy": "step", ...}` (values as JSON text).

    Example:

    ```python
    flatten({"train": {"epochs": 3}})  # {"train.epochs": "3"}
    ```
    """
    if isinstance(value, dict) and value:
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value if isinstance(value, str) else json.dumps(value)}


def setting_rows(runs: list[ComparedRun], differences_only: bool) -> list[tuple[str, list[str], bool]]:
    """`(key, value per run, differs)` for every setting any run has, sorted by key."""
    keys = sorted({k for run in runs for k in run.settings})
    rows = []
    for key in keys:
        values = [run.settings.get(key, "-") for run in runs]
        differs = len(set(values)) > 1
        if differs or not differences_only:
            rows.append((key, values, differs))
    return rows


def _load(registry: Registry, entry_id: int, color: str) -> ComparedRun:
    entry = entry_or_404(registry, entry_id, "run")
    run = RunFolder(entry.path)
    if not run.exists():
        raise HTTPException(404, f"Model {entry.name!r} has no run folder at {entry.path}.")
    try:
        info = run.read_run_info()
    except ValueError as error:  # An older run format: its message says how to upgrade it.
        raise HTTPException(409, f"Model {entry.name!r}: {error}") from None
    settings = flatten({"dataset": info.dataset_dir, "model": dataclasses.asdict(info.model),
                        "train": dataclasses.asdict(info.train)})
    return ComparedRun(entry=entry, color=color, info=info, epochs=run.read_metrics("epoch"),
                       settings=settings)


def _curves(run: ComparedRun) -> dict[str, Any]:
    curves = {name: [[r["epoch"], r[name]] for r in run.epochs if r.get(name) is not None]
              for name in _CURVES}
    return {"name": run.entry.name, "color": run.color, "curves": curves}


@router.get("/compare")
def compare_page(request: Request, run: list[int] = Query(default=[]), all: int = 0):
    """The runs' curves overlaid and their settings side by side."""
    ids = list(dict.fromkeys(run))  # Each run once, in the order given.
    if not 2 <= len(ids) <= MAX_RUNS:
        raise HTTPException(400, f"Compare: tick between 2 and {MAX_RUNS} models on the home "
                                 f"page; got {len(ids)}.")
    registry = Registry.open()
    try:
        runs = [_load(registry, i, _PALETTE[k % len(_PALETTE)]) for k, i in enumerate(ids)]
    finally:
        registry.close()
    rows = setting_rows(runs, differences_only=not all)
    differing = sum(1 for _, _, differs in setting_rows(runs, False) if differs)
    return render(request, "compare.html", runs=runs, rows=rows, show_all=bool(all),
                  differing=differing, curves=[_curves(r) for r in runs],
                  query="&".join(f"run={i}" for i in ids))
