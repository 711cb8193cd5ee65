"""The export benchmark: every artifact run by its own runtime on the test split.

For each artifact: top-1 accuracy, agreement with the Keras model's top-1,
the largest probability difference, file size, gzip size and median latency
of one image on this CPU. `export_report.json` holds the list under
`formats` (plus the context); `export_report.md` the same as a Markdown
table.

Statuses: "passed", "failed_verification" (exported, but it did not load,
run, or agree with Keras well enough; see `reason`) and "failed_export".

Example:

```python
result = measure("tflite_int8", runner, images, labels, keras_probs,
                 min_agreement=0.95, path="out/tflite/model_int8.tflite")
print(format_markdown([result]))
```
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import time
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
    "STATUSES",
    "FormatResult",
    "artifact_size",
    "check_top_k",
    "measure",
    "median_latency_ms",
    "format_markdown",
    "write_report",
]

STATUSES = ("passed", "failed_verification", "failed_export")
_BATCH = 256


@dataclasses.dataclass
class FormatResult:
    """One row of the report.

    Attributes:
        format: Artifact name, e.g. "tflite_int8".
        status: One of `STATUSES`.
        path: The artifact, relative to the export folder.
        size_bytes: Bytes on disk (a folder: all its files).
        gzip_bytes: Bytes after gzip -9 (a folder: its files concatenated).
        top1_accuracy: On the verification images (None when not run).
        agreement: Share of images whose top-1 equals the Keras model's.
        max_prob_diff: Largest |probability - Keras probability|.
        latency_ms: Median milliseconds for one image.
        reason: Why it failed, or a note.
        details: Format-specific facts (quantization, sparsity, spec).
    """

    format: str
    status: str
    path: str = ""
    size_bytes: int | None = None
    gzip_bytes: int | None = None
    top1_accuracy: float | None = None
    agreement: float | None = None
    max_prob_diff: float | None = None
    latency_ms: float | None = None
    reason: str = ""
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    found = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        found.extend(os.path.join(root, n) for n in sorted(names))
    return found


def artifact_size(path: str) -> tuple[int, int]:
    """`(bytes, gzip -9 bytes)` of a file, or of a folder's files in order."""
    buffer = io.BytesIO()
    size = 0
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=0) as archive:
        for name in _files(path):
            with open(name, "rb") as f:
                data = f.read()
            size += len(data)
            archive.write(data)
    return size, len(buffer.getvalue())


def median_latency_ms(run: Callable[[np.ndarray], Any], images: np.ndarray, count: int = 20) -> float:
    """Median milliseconds of `run` on single images (after one warm-up call)."""
    run(images[:1])
    times = []
    for image in images[:count]:
        start = time.perf_counter()
        run(image[None])
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def check_top_k(probabilities: np.ndarray, label_ids: np.ndarray, scores: np.ndarray,
                source: str, *, atol: float = 1e-2) -> None:
    """Checks that an artifact's label ids and scores are its probabilities' top-k.

    This is how a runner proves it read the right tensor for each output
    name: swapped or misnamed outputs fail here. Ties may be ordered either
    way, so the scores are compared, not the ids.

    Args:
        probabilities: `[B, classes]`.
        label_ids: `[B, k]`, best first.
        scores: `[B, k]`, best first.
        source: The artifact, for the message.
        atol: Tolerance (quantized artifacts round their outputs).

    Raises:
        RuntimeError: Shapes, order or values that are not the top-k.
    """
    k = scores.shape[-1] if scores.ndim == 2 else -1
    if (probabilities.ndim != 2 or label_ids.shape != scores.shape or scores.ndim != 2
            or len(scores) != len(probabilities) or not 0 < k <= probabilities.shape[1]):
        raise RuntimeError(f"{source}: expected probabilities [B, C] and label ids and scores "
                           f"[B, k <= C], got {probabilities.shape}, {label_ids.shape}, "
                           f"{scores.shape}.")
    ids = label_ids.astype(np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= probabilities.shape[1]:
        raise RuntimeError(f"{source}: label ids outside [0, {probabilities.shape[1]}).")
    expected = -np.sort(-probabilities, axis=1)[:, :k]
    problems = {
        "scores are not in descending order": np.any(np.diff(scores, axis=1) > atol),
        "scores are not the largest probabilities": not np.allclose(scores, expected, atol=atol),
        "label ids do not point at their scores": not np.allclose(
            np.take_along_axis(probabilities, ids, axis=1), scores, atol=atol),
    }
    bad = [text for text, failed in problems.items() if failed]
    if bad:
        raise RuntimeError(f"{source}: outputs are not consistent: {'; '.join(bad)}.")


def _batched(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(run(images[i:i + _BATCH]), np.float32)
                           for i in range(0, len(images), _BATCH)])


def measure(
    name: str,
    run: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    *,
    min_agreement: float,
    path: str,
    root: str = "",
    latency_ms: float | None = None,
    batched: bool = True,
    details: dict[str, Any] | None = None,
) -> FormatResult:
    """Runs one artifact on the verification images and scores it.

    Args:
        name: Artifact name.
        run: uint8 images `[B, H, W, C]` -> probabilities `[B, classes]`.
        images: Verification images.
        labels: Their labels.
        reference: The Keras model's probabilities on `images`.
        min_agreement: Top-1 agreement below which it fails verification.
        path: The artifact file or folder (for its size).
        root: Folder `path` is reported relative to.
        latency_ms: A latency measured by the runtime itself (TF.js in
            Node); else it is timed here on single images.
        batched: Call `run` in batches of 256 (False: once on everything).
        details: Extra facts for the report.

    Returns:
        A `FormatResult` ("passed" or "failed_verification").
    """
    size, gz = artifact_size(path)
    result = FormatResult(format=name, status="failed_verification",
                          path=os.path.relpath(path, root) if root else path,
                          size_bytes=size, gzip_bytes=gz, details=dict(details or {}))
    probs = _batched(run, images) if batched else np.asarray(run(images), np.float32)
    if probs.shape != reference.shape:
        result.reason = f"output shape {probs.shape}, expected {reference.shape}"
        return result
    if not np.all(np.isfinite(probs)):
        result.reason = "non-finite probabilities"
        return result
    predicted = probs.argmax(axis=1)
    result.top1_accuracy = float(np.mean(predicted == labels))
    result.agreement = float(np.mean(predicted == reference.argmax(axis=1)))
    result.max_prob_diff = float(np.max(np.abs(probs - reference)))
    result.latency_ms = latency_ms if latency_ms is not None else median_latency_ms(run, images)
    if result.agreement < min_agreement:
        result.reason = (f"top-1 agrees with Keras on {result.agreement:.2%} of images, "
                         f"below the required {min_agreement:.2%}")
    else:
        result.status = "passed"
    return result


def format_markdown(results: Sequence[FormatResult]) -> str:
    """The report as a Markdown table (sizes in KiB, accuracy in %)."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"

    def kib(v):
        return "-" if v is None else f"{v / 1024:.1f}"

    lines = [
        "| format | status | size KiB | gzip KiB | top-1 % | agreement % | max prob diff "
        "| latency ms | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        diff = "-" if r.max_prob_diff is None else f"{r.max_prob_diff:.2e}"
        latency = "-" if r.latency_ms is None else f"{r.latency_ms:.3f}"
        note = r.reason.replace("|", "/").replace("\n", " ")[:160]
        lines.append(f"| {r.format} | {r.status} | {kib(r.size_bytes)} | {kib(r.gzip_bytes)} "
                     f"| {pct(r.top1_accuracy)} | {pct(r.agreement)} | {diff} | {latency} "
                     f"| {note} |")
    return "\n".join(lines) + "\n"


def write_report(folder: str, results: Sequence[FormatResult], context: dict[str, Any]) -> str:
    """Writes `export_report.json` and `export_report.md`; returns the Markdown."""
    markdown = format_markdown(results)
    with open(os.path.join(folder, "export_report.json"), "w", encoding="utf-8") as f:
        json.dump({**context, "formats": [r.to_json() for r in results]}, f, indent=2,
                  default=str)
        f.write("\n")
    with open(os.path.join(folder, "export_report.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    return markdown
