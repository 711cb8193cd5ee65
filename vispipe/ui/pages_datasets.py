"""New dataset (every option of `vispipe dataset create`) and the dataset page.

Example:

```python
app.include_router(router)
```
"""

from __future__ import annotations

import asyncio
import io
import math
import os

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from vispipe.configs import ENCODINGS, RESIZE_MODES, DatasetConfig
from vispipe.registry import Registry
from vispipe.ui.forms import choice_field, float_field, int_field, new_folder_field, text_field
from vispipe.ui.jobs import log_tail
from vispipe.ui.settings import UnsafeInputError, confine
from vispipe.ui.templating import render
from vispipe.ui.views import entry_or_404, jobs_by_target, load_entry

__all__ = ["router"]

router = APIRouter()

SOURCE_KINDS = ("folder", "folders", "lists")
SAMPLES_PER_CLASS = 4
# Classes beyond this many get no sample row (the count table still lists them).
SAMPLE_CLASSES = 100
_PATH_FIELDS = {
    "folder": ("source",),
    "folders": ("train_dir", "val_dir", "test_dir"),
    "lists": ("train_list", "val_list", "test_list", "labels_file"),
}
_DEFAULTS = {"source_kind": "folder", "val_percent": "25", "test_percent": "0", "height": "28",
             "width": "28", "channels": "1", "resize_mode": "squash", "encoding": "png",
             "min_per_class": "2", "max_per_class": "0"}


@router.get("/datasets/new")
def new_dataset(request: Request):
    return render(request, "dataset_new.html", form=_DEFAULTS, errors={},
                  roots=request.app.state.settings.data_roots, modes=RESIZE_MODES,
                  encodings=ENCODINGS)


def parse_dataset_form(form, settings
                       ) -> tuple[list[str], str, str, dict[str, str], dict[str, str]]:
    """The `vispipe dataset create` arguments of a submitted form.

    The job gets the data roots too (`--data-root`): it refuses any file that
    resolves outside them, even one swapped in after the form was checked.

    Returns:
        (argv, name, output folder, source paths by `DatasetConfig` field,
        errors by field); argv is only usable when errors is empty.
    """
    errors: dict[str, str] = {}
    name, output = new_folder_field(form, settings.folder("datasets"), "dataset", errors)
    kind = choice_field(form, "source_kind", SOURCE_KINDS, errors, "folder")
    argv = ["dataset", "create", "--output", output]
    for root in settings.data_roots:
        argv += ["--data-root", root]
    sources: dict[str, str] = {}
    for field in _PATH_FIELDS.get(kind, ()):
        value = text_field(form, field)
        if not value:
            if field in ("source", "train_dir", "train_list", "labels_file"):
                errors[field] = "required for this source kind"
            continue
        try:
            path = confine(value, settings.data_roots, field)
        except UnsafeInputError as error:
            errors[field] = str(error)
            continue
        if not os.path.exists(path):
            errors[field] = f"{value!r} does not exist"
        sources[field] = path
        argv += [f"--{field.replace('_', '-')}", path]
    val = float_field(form, "val_percent", errors, low=0, high=90, default=25)
    test = float_field(form, "test_percent", errors, low=0, high=90, default=0)
    if val + test >= 100:
        errors["test_percent"] = f"val + test must be under 100%, got {val + test:g}%"
    height = int_field(form, "height", errors, low=4, high=1024, default=28)
    width = int_field(form, "width", errors, low=4, high=1024, default=28)
    channels = int(choice_field(form, "channels", ("1", "3"), errors, "1"))
    mode = choice_field(form, "resize_mode", RESIZE_MODES, errors, "squash")
    encoding = choice_field(form, "encoding", ENCODINGS, errors, "png")
    low = int_field(form, "min_per_class", errors, low=1, high=10**6, default=2)
    high = int_field(form, "max_per_class", errors, low=0, high=10**7, default=0)
    if high and high < low:
        errors["max_per_class"] = f"expected 0 (all) or at least min per class ({low}), got {high}"
    argv += ["--val-percent", f"{val:g}", "--test-percent", f"{test:g}",
             "--size", f"{height}x{width}", "--channels", str(channels),
             "--resize-mode", mode, "--encoding", encoding,
             "--min-per-class", str(low), "--max-per-class", str(high)]
    return argv, name, output, sources, errors


def _source_problem(sources: dict[str, str], roots: list[str]) -> str | None:
    """Why the job would refuse these sources (a file outside the data roots, one
    class, a bad list line ...), found by listing them as it will; else None."""
    from vispipe.data.sources import load_source

    try:
        load_source(DatasetConfig(**sources, data_roots=roots, val_percent=0, test_percent=0))
    except (OSError, ValueError) as error:
        return str(error)
    return None


@router.post("/datasets/new")
async def create_dataset(request: Request):
    settings = request.app.state.settings
    form = await request.form()
    argv, name, output, sources, errors = parse_dataset_form(form, settings)
    if not errors:
        # Listing a large folder takes a while: off the event loop.
        problem = await asyncio.to_thread(_source_problem, sources, settings.data_roots)
        if problem:
            errors[next(iter(sources))] = problem
    if errors:
        return render(request, "dataset_new.html", status_code=400, form=dict(form),
                      errors=errors, roots=settings.data_roots, modes=RESIZE_MODES,
                      encodings=ENCODINGS)
    job_id = request.app.state.queue.submit(f"Dataset {name}", "dataset", argv,
                                            target=output, target_kind="dataset")
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


def _example_image() -> np.ndarray:
    """A wide color test card: the resize modes differ on its aspect ratio."""
    y, x = np.mgrid[0:60, 0:120]
    image = np.zeros((60, 120, 3), np.uint8)
    image[..., 0] = (x * 2).astype(np.uint8)
    image[..., 1] = (y * 4).astype(np.uint8)
    image[((x - 60) ** 2 + (y - 30) ** 2) < 400] = (255, 255, 255)
    return image


@router.get("/datasets/resize-example/{mode}.png")
def resize_example(mode: str):
    from PIL import Image

    from vispipe.data.images import resize

    if mode not in RESIZE_MODES and mode != "original":
        raise HTTPException(404, f"Resize mode: expected one of {RESIZE_MODES}, got {mode!r}.")
    image = _example_image() if mode == "original" else resize(_example_image(), 64, 64, mode)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return Response(buffer.getvalue(), media_type="image/png",
                    headers={"Cache-Control": "max-age=3600"})


@router.get("/datasets/{entry_id}")
def dataset_page(request: Request, entry_id: int):
    from vispipe.data.format import read_dataset_info

    registry = Registry.open()
    try:
        entry = entry_or_404(registry, entry_id, "dataset")
        job = jobs_by_target(registry).get(entry.path)
    finally:
        registry.close()
    info, problem = None, ""
    if entry.status == "completed":
        try:
            info = read_dataset_info(entry.path)
        except (FileNotFoundError, ValueError) as error:
            problem = str(error)
    split = _sample_split(info) if info else None
    samples = [(label, name, min(SAMPLES_PER_CLASS, info.class_counts.get(split, {}).get(name, 0)))
               for label, name in enumerate(info.classes[:SAMPLE_CLASSES])] if split else []
    return render(request, "dataset.html", entry=entry, info=info, problem=problem, job=job,
                  imbalance=_imbalance(info) if info else {},
                  log=log_tail(job) if job else "", split=split, samples=samples,
                  more_classes=max(0, len(info.classes) - SAMPLE_CLASSES) if info else 0)


def _imbalance(info) -> dict[str, tuple[str, bool]]:
    """Per split: largest / smallest class count as text ("20.0x"), and whether to warn."""
    from vispipe.data.balance import IMBALANCE_WARNING, class_counts_of, imbalance_ratio

    shown = {}
    for split in info.splits:
        if split in info.class_counts:
            ratio = imbalance_ratio(class_counts_of(info, split))
            text = "a class has no image" if math.isinf(ratio) else f"{ratio:.1f}x"
            shown[split] = (text, ratio >= IMBALANCE_WARNING)
    return shown


def _sample_split(info) -> str | None:
    """The split whose images the page shows: train, else the first there is."""
    return "train" if "train" in info.splits else next(iter(info.splits), None)


@router.get("/datasets/{entry_id}/sample/{label}/{index}.png")
def sample_image(entry_id: int, label: int, index: int):
    """Image `index` of class `label` as stored in the dataset (read from its shards)."""
    from vispipe.data.format import read_dataset_info
    from vispipe.ui.samples import sample_index, sample_png

    entry = load_entry(entry_id)
    if entry.kind != "dataset" or entry.status != "completed":
        raise HTTPException(404, f"Registry entry {entry_id} is not a completed dataset.")
    try:
        info = read_dataset_info(entry.path)
        split = _sample_split(info)
        found = sample_index(info, split, SAMPLES_PER_CLASS).get(label, []) if split else []
        png = sample_png(*found[index]) if 0 <= index < len(found) else None
    except (OSError, ValueError, KeyError) as error:
        raise HTTPException(404, f"Dataset {entry_id}: cannot read the sample: {error}") from None
    if png is None:
        raise HTTPException(404, f"Class {label} has no sample {index} among the first records "
                                 f"of the {split} split.")
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})
