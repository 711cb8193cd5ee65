"""`benchmark`: every format of a run side by side, and which one to pick.

As Ultralytics' benchmark mode does, `benchmark(run)` exports every format,
runs each in its own runtime on the test split (`export_model`), and
tabulates size, accuracy, agreement with Keras and latency on this machine,
with a PNG of accuracy against size and against latency
(`vispipe.export.benchmark_plot`). `summarize(export_dir)` does the same
from an export that already exists, without TensorFlow (what a web page
calls to show an export's table and plot).

Files written into the export folder: `benchmark.json` (the
`BenchmarkReport`), `benchmark.md` (the table and the picks) and
`benchmark.png`.

The picks make the choice readable: the most accurate format, the smallest
and the fastest within `max_drop` of the Keras model's top-1, and one per
deployment target (TF Serving, phones, browsers, Intel, other runtimes).

Example:

```python
report = benchmark("runs/mnist", "exports/mnist-bench")
print(report.text())
report = summarize("exports/mnist")  # an existing export: table, picks, plot
report.plot_path, [row.format for row in report.rows if row.pareto]
```
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Sequence

__all__ = ["REPORT_FILE", "BenchmarkRow", "BenchmarkReport", "benchmark", "summarize"]

REPORT_FILE = "export_report.json"
_STATUS_MARK = {"passed": "✅", "failed_verification": "❎", "failed_export": "❌"}
_LEGEND = "Legend: ✅ passed  ❎ exported, but verification failed  ❌ export failed"
# Runtime of each format family (the prefix before the first "_").
_RUNTIMES = {"keras": "Keras (TensorFlow)", "savedmodel": "TensorFlow SavedModel",
             "tflite": "LiteRT", "coreml": "Core ML", "tfjs": "TF.js (Node, CPU)",
             "onnx": "ONNX Runtime (CPU)", "openvino": "OpenVINO (CPU)"}
# Deployment targets: (pick, what it is for, format family, what is preferred).
_TARGETS = (
    ("serving", "TF Serving / vispipe serve", "savedmodel", "fastest"),
    ("mobile", "Android, iOS, microcontrollers (LiteRT)", "tflite", "smallest"),
    ("apple", "Apple devices (Core ML)", "coreml", "smallest"),
    ("browser", "browsers (TF.js)", "tfjs", "smallest"),
    ("intel", "Intel CPUs, GPUs and NPUs (OpenVINO)", "openvino", "fastest"),
    ("onnx", "ONNX Runtime, TensorRT and NPU toolchains", "onnx", "fastest"),
)


@dataclasses.dataclass(frozen=True)
class BenchmarkRow:
    """One format.

    Attributes:
        format: The artifact, e.g. "onnx_int8".
        runtime: What ran it.
        status: "passed", "failed_verification" or "failed_export".
        size_mb: Megabytes on disk (10^6 bytes).
        gzip_mb: Megabytes after gzip -9 (what a download costs).
        smaller_than_float32: Size of the same format's float32 over this
            one's (e.g. 3.9 for an int8 model), None without a float32.
        top1: Top-1 accuracy (0-1) on the verification images.
        top1_drop: Keras top-1 minus this one's, in points (positive: worse),
            on the same images (TF.js may be verified on a subset).
        agreement: Share of images whose top-1 equals Keras's.
        max_prob_diff: Largest probability difference from Keras.
        latency_ms: Median milliseconds per single image on the machine
            that exported it.
        fps: Images per second at that latency.
        pareto: No other passed format is both at least as small and at
            least as accurate (top-1 drop from Keras), or both at least as
            fast and as accurate (with one of them strictly better).
        picks: The picks that chose it (keys of `BenchmarkReport.picks`).
        path: The artifact, relative to the export folder.
        reason: Why it failed, or a note.
    """

    format: str
    runtime: str
    status: str
    size_mb: float | None = None
    gzip_mb: float | None = None
    smaller_than_float32: float | None = None
    top1: float | None = None
    top1_drop: float | None = None
    agreement: float | None = None
    max_prob_diff: float | None = None
    latency_ms: float | None = None
    fps: float | None = None
    pareto: bool = False
    picks: tuple[str, ...] = ()
    path: str = ""
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class BenchmarkReport:
    """The benchmark of one export.

    Attributes:
        name: The model's name.
        export_dir: The export folder.
        platform: The machine the latencies were measured on.
        verify_split: The split the formats ran on.
        verify_images: How many images.
        max_drop: The accuracy budget of the picks, in points.
        rows: One per format, in export order (Keras first).
        picks: `{pick: format}`: "accurate" (the artifact whose top-1 drops
            least from Keras's on its images), "smallest" and "fastest"
            (within `max_drop` of Keras), and one per target
            ("serving", "mobile", "apple", "browser", "intel", "onnx"); see
            `pick_descriptions`.
        plot_path: `benchmark.png` ("" when not drawn).
        seconds: How long the benchmark took (exports included).
    """

    name: str
    export_dir: str
    platform: str
    verify_split: str
    verify_images: int
    max_drop: float
    rows: tuple[BenchmarkRow, ...]
    picks: dict[str, str]
    plot_path: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def headline(self) -> str:
        return (f"Benchmarks complete for {self.name} on {self.verify_images:,} "
                f"{self.verify_split} images ({self.seconds:.1f} s) on {self.platform}")

    def table_rows(self) -> tuple[list[str], list[list[Any]]]:
        """`(headers, rows)` of the table, values formatted for display."""
        def num(value, digits):
            return "-" if value is None else f"{value:.{digits}f}"

        headers = ["", "format", "runtime", "status", "size MB", "gzip MB", "x smaller",
                   "top-1 %", "drop pts", "agree %", "max diff", "ms/image", "FPS", "pick"]
        rows = []
        for i, r in enumerate(self.rows):
            rows.append([
                str(i), r.format, r.runtime, f"{_STATUS_MARK.get(r.status, r.status)}",
                num(r.size_mb, 3), num(r.gzip_mb, 3),
                "-" if r.smaller_than_float32 is None else f"{r.smaller_than_float32:.1f}x",
                "-" if r.top1 is None else f"{100 * r.top1:.2f}", num(r.top1_drop, 2),
                "-" if r.agreement is None else f"{100 * r.agreement:.2f}",
                "-" if r.max_prob_diff is None else f"{r.max_prob_diff:.1e}",
                num(r.latency_ms, 3), num(r.fps, 0),
                ("*" if r.pareto else "") + " ".join(r.picks)])
        return headers, rows

    def pick_descriptions(self) -> dict[str, str]:
        """What each pick means, e.g. "smallest": "smallest within 0.5 points of Keras"."""
        budget = f"within {self.max_drop:g} points of Keras"
        return {"accurate": "most accurate (smallest drop from Keras)", "smallest": f"smallest {budget}",
                "fastest": f"fastest on this machine {budget}",
                **{key: f"for {label}" for key, label, _, _ in _TARGETS}}

    def _pick_lines(self) -> list[str]:
        rows = {r.format: r for r in self.rows}
        lines = []
        for pick, fmt in self.picks.items():
            r = rows[fmt]
            facts = [f"{r.size_mb:.3f} MB" if r.size_mb is not None else "",
                     f"{100 * r.top1:.2f}% top-1" if r.top1 is not None else "not run here",
                     f"{r.latency_ms:.2f} ms" if r.latency_ms is not None else ""]
            lines.append(f"- {self.pick_descriptions()[pick]}: {fmt} "
                         f"({', '.join(f for f in facts if f)})")
        return lines

    def text(self) -> str:
        """The terminal summary: headline, legend, table, picks, failures."""
        from vispipe.tables import format_table

        headers, rows = self.table_rows()
        failed = [f"- {r.format}: {r.reason}" for r in self.rows if r.status != "passed"]
        parts = [self.headline(), _LEGEND + "  * on the size or latency Pareto front", "",
                 format_table(rows, headers), "", "Picks:", *self._pick_lines()]
        if failed:
            parts += ["", "Failed:", *failed]
        if self.plot_path:
            parts += ["", f"Plot: {self.plot_path}"]
        return "\n".join(parts) + "\n"

    def markdown(self) -> str:
        """`benchmark.md`: the same as Markdown."""
        headers, rows = self.table_rows()
        lines = [f"**{self.headline()}**", "", _LEGEND + "; * on the size or latency Pareto "
                 "front", "", "| " + " | ".join(headers) + " |",
                 "|" + "|".join("---:" if h not in ("format", "runtime", "pick") else "---"
                               for h in headers) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
        lines += ["", "Picks:", *self._pick_lines()]
        failed = [f"- {r.format}: {r.reason}" for r in self.rows if r.status != "passed"]
        if failed:
            lines += ["", "Failed:", *failed]
        if self.plot_path:
            lines += ["", f"![accuracy vs size and latency]({os.path.basename(self.plot_path)})"]
        return "\n".join(lines) + "\n"


# Weight types a format name ends with, longest first ("_dynamic_int8" before "_int8").
_WEIGHT_SUFFIXES = ("_dynamic_int8", "_float32", "_float16", "_uint8", "_int8")


def _family(fmt: str) -> str:
    """"onnx_int8" -> "onnx", "tflite_dynamic_int8" -> "tflite",
    "tflite_pruned80_int8" -> "tflite_pruned80", "keras" -> "keras"."""
    suffix = next((s for s in _WEIGHT_SUFFIXES if fmt.endswith(s)), "")
    return fmt[:-len(suffix)] if suffix else fmt


def _dominated(row: BenchmarkRow, others: Sequence[BenchmarkRow], cost: str) -> bool:
    mine = getattr(row, cost)
    for other in others:
        theirs = getattr(other, cost)
        if other is row or theirs is None:
            continue
        # Drops from Keras compare formats verified on different images.
        if (theirs <= mine and other.top1_drop <= row.top1_drop
                and (theirs < mine or other.top1_drop < row.top1_drop)):
            return True
    return False


def _rows(results: Sequence[dict[str, Any]]) -> list[BenchmarkRow]:
    keras = next((r for r in results if r["format"] == "keras"), None)
    keras_top1 = keras.get("top1_accuracy") if keras else None
    sizes = {r["format"]: r.get("size_bytes") for r in results}
    rows = []
    for r in results:
        family = _family(r["format"])
        float32 = sizes.get(f"{family}_float32") if family != r["format"] else None
        size, top1, latency = r.get("size_bytes"), r.get("top1_accuracy"), r.get("latency_ms")
        # A format verified on a subset is compared with Keras on that subset.
        reference = (r.get("details") or {}).get("keras_top1", keras_top1)
        rows.append(BenchmarkRow(
            format=r["format"], runtime=_RUNTIMES.get(r["format"].split("_")[0], "?"),
            status=r["status"], size_mb=None if size is None else size / 1e6,
            gzip_mb=None if r.get("gzip_bytes") is None else r["gzip_bytes"] / 1e6,
            smaller_than_float32=float32 / size if float32 and size else None,
            top1=top1,
            top1_drop=None if top1 is None or reference is None else 100 * (reference - top1),
            agreement=r.get("agreement"), max_prob_diff=r.get("max_prob_diff"),
            latency_ms=latency, fps=1000.0 / latency if latency else None,
            path=r.get("path", ""), reason=r.get("reason", "")))
    return rows


def _picks(rows: list[BenchmarkRow], max_drop: float) -> dict[str, str]:
    measured = [r for r in rows if r.status == "passed" and r.top1 is not None]
    within = [r for r in measured if r.top1_drop is not None and r.top1_drop <= max_drop]

    def smallest(candidates):
        sized = [r for r in candidates if r.size_mb is not None]
        return min(sized, key=lambda r: (r.size_mb, -(r.top1 or 0)), default=None)

    def fastest(candidates):
        timed = [r for r in candidates if r.latency_ms is not None]
        return min(timed, key=lambda r: (r.latency_ms, -r.top1), default=None)

    exported = [r for r in within if r.format != "keras"]
    choices = {
        # Against Keras on the same images: TF.js may run on fewer of them.
        "accurate": min([r for r in measured if r.format != "keras" and r.top1_drop is not None],
                        key=lambda r: (r.top1_drop, -(r.agreement or 0), r.size_mb or 0),
                        default=None),
        "smallest": smallest(exported),
        "fastest": fastest(exported),
    }
    for pick, _, family, prefer in _TARGETS:
        candidates = [r for r in within if r.format.split("_")[0] == family]
        choose = smallest if prefer == "smallest" else fastest
        # Formats not run here (Core ML on Linux) passed a spec check: the smallest.
        choices[pick] = choose(candidates) or smallest(
            [r for r in rows if r.status == "passed" and r.top1 is None
             and r.format.split("_")[0] == family])
    return {pick: row.format for pick, row in choices.items() if row is not None}


def summarize(export_dir: str | os.PathLike, *, max_drop: float = 0.5, plot: bool = True,
              seconds: float | None = None) -> BenchmarkReport:
    """Builds the benchmark of an existing export (its `export_report.json`).

    Needs neither TensorFlow nor the converters, so a web page can call it.

    Args:
        export_dir: An export folder written by `export_model`.
        max_drop: Accuracy budget of the picks, in top-1 points below Keras.
        plot: Draw `benchmark.png`.
        seconds: How long the exports took (None: not known, 0 shown).

    Returns:
        The `BenchmarkReport`; `benchmark.json`, `benchmark.md` and (with
        `plot`) `benchmark.png` are written into `export_dir`.

    Raises:
        FileNotFoundError: No `export_report.json` in `export_dir`.
        ValueError: A negative `max_drop`.

    Example:

    ```python
    report = summarize("exports/mnist", max_drop=1.0)
    print(report.picks["smallest"], report.pick_descriptions()["smallest"])
    ```
    """
    folder = os.path.abspath(os.fspath(export_dir))
    path = os.path.join(folder, REPORT_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder!r} is not an export folder: it has no {REPORT_FILE} "
                                "(make one with `vispipe export` or `vispipe benchmark RUN`).")
    if max_drop < 0:
        raise ValueError(f"max_drop: expected points >= 0, got {max_drop}.")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    rows = _rows(saved.get("formats", []))
    passed = [r for r in rows if r.status == "passed" and r.top1_drop is not None]
    picks = _picks(rows, max_drop)
    chosen: dict[str, list[str]] = {}
    for pick, fmt in picks.items():
        chosen.setdefault(fmt, []).append(pick)
    rows = [dataclasses.replace(
        r, picks=tuple(chosen.get(r.format, ())),
        pareto=r in passed and r.size_mb is not None and (
            not _dominated(r, [p for p in passed if p.size_mb is not None], "size_mb")
            or (r.latency_ms is not None and not _dominated(
                r, [p for p in passed if p.latency_ms is not None], "latency_ms"))))
        for r in rows]
    report = BenchmarkReport(
        name=saved.get("name", os.path.basename(folder)), export_dir=folder,
        platform=saved.get("platform", ""), verify_split=saved.get("verify_split", ""),
        verify_images=int(saved.get("verify_images", 0)), max_drop=max_drop,
        rows=tuple(rows), picks=picks, seconds=seconds or 0.0)
    if plot:
        from vispipe.export.benchmark_plot import plot_benchmark

        report = dataclasses.replace(report, plot_path=plot_benchmark(
            report, os.path.join(folder, "benchmark.png")))
    for name, text in (("benchmark.json", json.dumps(report.to_json(), indent=2) + "\n"),
                       ("benchmark.md", report.markdown())):
        with open(os.path.join(folder, f"{name}.partial"), "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(os.path.join(folder, f"{name}.partial"), os.path.join(folder, name))
    return report


def benchmark(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    formats: Sequence[str] | str | None = None,
    *,
    overwrite: bool = False,
    options=None,
    max_drop: float = 0.5,
    plot: bool = True,
) -> BenchmarkReport:
    """Exports a run to every format, verifies each, and benchmarks them.

    Args:
        run_dir: A completed run folder.
        out_dir: The export folder to create.
        formats: As `export_model`'s (None: `options.formats`; empty, the
            default: every installed format).
        overwrite: Replace an existing `out_dir`.
        options: `ExportOptions` (formats, verification split and limit,
            calibration...).
        max_drop: Accuracy budget of the picks, in top-1 points below Keras.
        plot: Draw `benchmark.png`.

    Returns:
        The `BenchmarkReport` (see `summarize`).

    Raises:
        As `export_model` and `summarize`.

    Example:

    ```python
    report = benchmark("runs/mnist", "exports/mnist", "tflite,onnx,openvino")
    print(report.text())
    ```
    """
    from vispipe.export.api import export_model

    if max_drop < 0:
        raise ValueError(f"max_drop: expected points >= 0, got {max_drop}.")
    start = time.perf_counter()
    report = export_model(run_dir, out_dir, formats, overwrite=overwrite, options=options)
    return summarize(report["out_dir"], max_drop=max_drop, plot=plot,
                     seconds=time.perf_counter() - start)
