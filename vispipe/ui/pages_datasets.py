"""New dataset (every option of `vispipe dataset create`) and the dataset page.

Example:

```python
app.include_router(router)
```
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import math
import os

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from vispipe.configs import RESIZE_MODES, DatasetConfig
from vispipe.registry import Registry
from vispipe.ui.config_form import FormField, checked_config, form_defaults, options, read_fields
from vispipe.ui.forms import choice_field, new_folder_field, text_field
from vispipe.ui.jobs import log_tail
from vispipe.ui.settings import UnsafeInputError, confine
from vispipe.ui.templating import render
from vispipe.ui.views import entry_or_404, jobs_by_target, load_entry

__all__ = ["router", "DATASET_FIELDS", "parse_dataset_form"]

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
_REQUIRED = ("source", "train_dir", "train_list", "labels_file")
# Form field -> config key: types, defaults and allowed values come from `DatasetConfig`.
DATASET_FIELDS = (
    FormField("val_percent", "dataset.val_percent", 0, 90),
    FormField("test_percent", "dataset.test_percent", 0, 90),
    FormField("height", "dataset.image.height", 4, 1024),
    FormField("width", "dataset.image.width", 4, 1024),
    FormField("channels", "dataset.image.channels"),
    FormField("resize_mode", "dataset.image.resize_mode"),
    FormField("encoding", "dataset.image.encoding"),
    FormField("min_per_class", "dataset.min_per_class", 1, 10**6),
    FormField("max_per_class", "dataset.max_per_class", 0, 10**7),
)


def _page(request: Request, form, errors: dict[str, str], status_code: int = 200):
    return render(request, "dataset_new.html", status_code=status_code,
                  form={**form_defaults(DATASET_FIELDS), "source_kind": "folder", **form},
                  errors=errors, roots=request.app.state.settings.data_roots,
                  modes=options("dataset.image.resize_mode"),
                  encodings=options("dataset.image.encoding"),
                  channels=options("dataset.image.channels"))


@router.get("/datasets/new")
def new_dataset(request: Request):
    return _page(request, {}, {})


def _sources(form, kind: str, roots: list[str], errors: dict[str, str]) -> dict[str, str]:
    """The form's source paths by `DatasetConfig` field, each confined to the data roots."""
    sources: dict[str, str] = {}
    for field in _PATH_FIELDS.get(kind, ()):
        value = text_field(form, field)
        if not value:
            if field in _REQUIRED:
                errors[field] = "required for this source kind"
            continue
        try:
            path = confine(value, roots, field)
        except UnsafeInputError as error:
            errors[field] = str(error)
            continue
        if "${" in path:  # A config file would read it as an environment variable.
            errors[field] = f"{value!r}: expected a path without '${{'"
        elif not os.path.exists(path):
            errors[field] = f"{value!r} does not exist"
        sources[field] = path
    return sources


def parse_dataset_form(form, settings) -> tuple[DatasetConfig, str, dict[str, str]]:
    """The `vispipe dataset create` config of a submitted form.

    The job gets the data roots too (`dataset.data_roots`): it refuses any
    file that resolves outside them, even one swapped in after the form was
    checked.

    Returns:
        (the `DatasetConfig`, the dataset's name, errors by field); the
        config is only usable when errors is empty.
    """
    errors: dict[str, str] = {}
    name, output = new_folder_field(form, settings.folder("datasets"), "dataset", errors)
    kind = choice_field(form, "source_kind", SOURCE_KINDS, errors, "folder")
    tree = read_fields(form, DATASET_FIELDS, errors)
    dataset = tree["dataset"]
    dataset.update(_sources(form, kind, settings.data_roots, errors), output=output,
                   data_roots=list(settings.data_roots))
    if dataset["val_percent"] + dataset["test_percent"] >= 100:
        errors["test_percent"] = (f"val + test must be under 100%, got "
                                  f"{dataset['val_percent'] + dataset['test_percent']:g}%")
    low, high = dataset["min_per_class"], dataset["max_per_class"]
    if high and high < low:
        errors["max_per_class"] = f"expected 0 (all) or at least min per class ({low}), got {high}"
    return checked_config(tree, DATASET_FIELDS, errors).dataset, name, errors


def _source_problem(config: DatasetConfig) -> str | None:
    """Why the job would refuse these sources (a file outside the data roots, one
    class, a bad list line ...), found by listing them as it will; else None."""
    from vispipe.data.sources import load_source

    try:
        load_source(dataclasses.replace(config, val_percent=0, test_percent=0))
    except (OSError, ValueError) as error:
        return str(error)
    return None


@router.post("/datasets/new")
async def create_dataset(request: Request):
    form = await request.form()
    config, name, errors = parse_dataset_form(form, request.app.state.settings)
    if not errors:
        # Listing a large folder takes a while: off the event loop.
        problem = await asyncio.to_thread(_source_problem, config)
        if problem:
            errors[next(f for f in _PATH_FIELDS[form.get("source_kind") or "folder"]
                        if getattr(config, f))] = problem
    if errors:
        return _page(request, dict(form), errors, status_code=400)
    job_id = request.app.state.queue.submit(f"Dataset {name}", "dataset", ["dataset", "create"],
                                            config={"dataset": config}, target=config.output,
                                            target_kind="dataset")
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
