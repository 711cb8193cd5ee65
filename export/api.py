"""`export_model`: every format from one trained run, then verified.

```
<out>/
  labels.txt, export.json            # the contract: labels, input, preprocessing, run
  export_report.json, export_report.md
  savedmodel/models.config, savedmodel/<name>/<version>/...
  tflite/<name>_{float32,float16,dynamic_int8,int8}.tflite
  pruned/<name>_pruned<NN>_{float32,int8}.tflite, pruned/pruned<NN>.json
  coreml/<name>_{float16,int8}.mlpackage
  tfjs/{float32,float16,uint8}/model.json + weight shards
  onnx/<name>_{float32,float16,int8}.onnx, onnx/labels.txt, onnx/export.json
  openvino/{float32,float16,int8}/<name>.{xml,bin}, openvino/labels.txt, openvino/export.json
```

Everything is written into a temporary folder beside `<out>`
(`vispipe.fileio.atomic_path`) and renamed when complete. A format that fails is recorded with its reason and does not stop
the others.

Example:

```python
report = export_model("runs/mnist", "exports/mnist", formats=["tflite", "tfjs"])
print(report["markdown"])
```
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import traceback
from typing import Any, Callable, Sequence

import numpy as np

from vispipe.config_io import validate_config
from vispipe.export.contract import IncompleteRunError, RunSpec, load_run
from vispipe.export.options import (
    COREML_WEIGHTS,
    FORMAT_CHOICES,
    FORMAT_VARIANTS,
    FORMATS,
    TFJS_QUANTIZATIONS,
    ExportOptions,
    installed_formats,
)
from vispipe.export.verify import FormatResult, artifact_size, measure, write_report
from vispipe.data.format import LABELS_FILE
from vispipe.fileio import atomic_path

__all__ = ["FORMATS", "ExportOptions", "UnwritableOutputError", "export_model"]

# Top-1 agreement with Keras an artifact needs to pass verification.
_MIN_AGREEMENT = {"float32": 0.995, "float16": 0.99, "quantized": 0.95}


class UnwritableOutputError(PermissionError, ValueError):
    """The export folder cannot be created or written."""


def _check_formats(formats: Sequence[str] | str) -> list[str]:
    """The requested names in a fixed order; empty: every format whose tools are installed."""
    if not isinstance(formats, str) and not formats:
        return list(installed_formats())
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMAT_CHOICES]
    if unknown or not formats:
        raise ValueError(f"formats: expected names from {FORMATS} or a single variant "
                         f"such as 'onnx_int8', got {list(formats)!r}"
                         f"{f' (unknown: {unknown})' if unknown else ''}.")
    return [f for f in FORMAT_CHOICES if f in formats]


def _variants(fmt: str, formats: list[str]) -> list[str]:
    """The variants of `fmt` asked for: all for "onnx", else the named ones ("onnx_int8")."""
    if fmt in formats:
        return list(FORMAT_VARIANTS[fmt])
    return [v for v in FORMAT_VARIANTS[fmt] if f"{fmt}_{v}" in formats]


def _check_options(options: ExportOptions) -> None:
    validate_config(options, "export")
    bad = [s for s in options.sparsities if not 0.0 < s < 1.0]
    if bad or not options.sparsities:
        raise ValueError(f"sparsities: expected values in (0, 1), got {list(options.sparsities)}.")
    for field, values, allowed in (("coreml_weights", options.coreml_weights, COREML_WEIGHTS),
                                   ("tfjs_quantizations", options.tfjs_quantizations,
                                    TFJS_QUANTIZATIONS)):
        if not values or any(v not in allowed for v in values):
            raise ValueError(f"{field}: expected values from {allowed}, got {list(values)}.")
    if (min(options.verify_limit, options.tfjs_verify_limit, options.prune_limit,
            options.prune_min_steps) < 0 or options.prune_epochs <= 0):
        raise ValueError(
            f"verify_limit/tfjs_verify_limit/prune_limit/prune_min_steps must be >= 0 and "
            f"prune_epochs > 0, got {options.verify_limit}/{options.tfjs_verify_limit}/"
            f"{options.prune_limit}/{options.prune_min_steps}/{options.prune_epochs}.")


def _check_output(out_dir: str, overwrite: bool) -> str:
    out = os.path.abspath(out_dir)
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"Export folder {out!r} already exists; choose another folder "
                              "or pass overwrite=True (--overwrite).")
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"Export output {out!r} exists and is not a folder.")
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UnwritableOutputError(f"Cannot create the export folder's parent {parent!r}: {e}.") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UnwritableOutputError(f"Export folder {out!r} cannot be written: {parent!r} is not "
                              "writable.")
    return out


def _load_data(spec: RunSpec, formats: list[str], options: ExportOptions):
    """(calibration images, train images, train labels, verify images, verify labels, split)."""
    from vispipe.export.tflite import MIN_CALIBRATION_SAMPLES
    from vispipe.data.format import IncompleteDatasetError, read_dataset_info
    from vispipe.data.inputs import load_arrays

    try:
        info = read_dataset_info(spec.dataset_dir)
    except (IncompleteDatasetError, ValueError) as e:
        raise IncompleteRunError(f"The run's dataset cannot be read ({e}); export needs it for "
                                 "calibration, pruning and verification.") from None
    train_x = train_y = calibration = None
    int8 = any("int8" in _variants(f, formats) for f in FORMAT_VARIANTS)
    if "tflite" in formats or "pruned" in formats or int8:
        if options.calibration_size < MIN_CALIBRATION_SAMPLES:
            raise ValueError(f"calibration_size: expected at least {MIN_CALIBRATION_SAMPLES} "
                             f"images, got {options.calibration_size}.")
        available = info.split_counts.get("train", 0)
        if available < MIN_CALIBRATION_SAMPLES:
            raise ValueError(
                f"The representative set is too small: the train split of {info.path!r} has "
                f"{available} images, int8 calibration needs at least {MIN_CALIBRATION_SAMPLES}.")
        limit = options.prune_limit if "pruned" in formats else options.calibration_size
        train_x, train_y = load_arrays(info, "train", limit)
        # A fixed, class-mixed sample: evenly spaced over the (shuffled) split.
        index = np.linspace(0, len(train_x) - 1, min(options.calibration_size, len(train_x)))
        calibration = train_x[np.unique(index.astype(int))]
    split = options.verify_split or ("test" if info.split_counts.get("test") else "val")
    verify_x, verify_y = load_arrays(info, split)
    if 0 < options.verify_limit < len(verify_y):
        # Val/test are stored in class order: a fixed, evenly spaced sample
        # keeps every class, where the first N images would hold only a few.
        index = np.linspace(0, len(verify_y) - 1, options.verify_limit).astype(int)
        verify_x, verify_y = verify_x[index], verify_y[index]
    return calibration, train_x, train_y, verify_x, verify_y, split


class _Exporter:
    """Runs the formats into `folder`, collecting one `FormatResult` each."""

    def __init__(self, spec, model, folder, final_dir, options, data):
        self.spec, self.model, self.folder, self.final_dir = spec, model, folder, final_dir
        self.options = options
        (self.calibration, self.train_x, self.train_y,
         self.images, self.labels, self.split) = data
        self.reference = self._keras_probs()
        self.keras_accuracy = float(np.mean(self.reference.argmax(axis=1) == self.labels))
        self.results: list[FormatResult] = []
        self.savedmodel_dir = ""
        self.savedmodel_error = "the SavedModel was not exported"
        self._graph = None

    def _keras_probs(self) -> np.ndarray:
        from vispipe.evaluate.evaluator import predict_probabilities

        return np.concatenate([predict_probabilities(self.model, self.images[i:i + 256])
                               for i in range(0, len(self.images), 256)])

    def _path(self, *parts: str) -> str:
        path = os.path.join(self.folder, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def attempt(self, name: str, path: str, export: Callable[[], Any],
                runner: Callable[[], Callable] | None, min_agreement: float,
                details: dict[str, Any] | None = None, note: str = "",
                max_drop: float | None = None, limit: int = 0) -> None:
        """Exports one artifact, then verifies it; failures become report rows.

        With `runner` None the artifact has no runtime here: `export` must
        check it (a spec check) and `note` says why it was not run. With
        `limit`, it is verified on that many of the images, evenly spaced.
        """
        images, labels, reference = self.images, self.labels, self.reference
        keras_accuracy, subset = self.keras_accuracy, ""
        if 0 < limit < len(labels):
            index = np.linspace(0, len(labels) - 1, limit).astype(int)
            images, labels, reference = images[index], labels[index], reference[index]
            keras_accuracy = float(np.mean(reference.argmax(axis=1) == labels))
            subset = f"verified on {limit} of the {len(self.labels)} images"
            # The benchmark compares its top-1 with Keras's on the same images.
            details = {**(details or {}), "verify_images": int(limit),
                       "keras_top1": keras_accuracy}
        try:
            extra = export() or {}
        except Exception as e:  # One format's failure must not stop the others.
            self.results.append(FormatResult(format=name, status="failed_export",
                                             reason=_reason(e), details=dict(details or {})))
            return
        details = {**(details or {}), **extra}
        try:
            if runner is None:
                size, gz = artifact_size(path)
                self.results.append(FormatResult(
                    format=name, status="passed", path=os.path.relpath(path, self.folder),
                    size_bytes=size, gzip_bytes=gz, details=details, reason=note))
                return
            run = runner()
            result = measure(name, run, images, labels, reference,
                             min_agreement=min_agreement, path=path, root=self.folder,
                             latency_ms=None, batched=not hasattr(run, "last"), details=details)
            drop = keras_accuracy - (result.top1_accuracy or 0.0)
            if max_drop is not None and result.status == "passed" and drop > max_drop:
                result.status = "failed_verification"
                result.reason = (f"top-1 accuracy {drop:.2%} below Keras, more than the allowed "
                                 f"{max_drop:.2%}")
            if hasattr(run, "last"):
                result.latency_ms = run.last.get("latency_ms")
                result.details["node_backend"] = run.last.get("backend")
            result.reason = result.reason or subset
        except Exception as e:  # Exported but not verified: recorded, others go on.
            size, gz = artifact_size(path) if os.path.exists(path) else (None, None)
            result = FormatResult(format=name, status="failed_verification",
                                  path=os.path.relpath(path, self.folder), size_bytes=size,
                                  gzip_bytes=gz, reason=_reason(e), details=details)
        self.results.append(result)

    def keras(self) -> None:
        from vispipe.train.run_folder import RunFolder

        run = RunFolder(self.spec.run_dir)
        path = {"final": run.model_path, "best": run.best_path}.get(
            self.options.which, run.model_path)
        size, gz = artifact_size(path) if os.path.isfile(path) else (None, None)
        from vispipe.export.verify import median_latency_ms

        self.results.append(FormatResult(
            format="keras", status="passed", path=path, size_bytes=size, gzip_bytes=gz,
            top1_accuracy=self.keras_accuracy, agreement=1.0,
            max_prob_diff=0.0, latency_ms=median_latency_ms(
                lambda x: self.model.predict_on_batch(x.astype(np.float32)), self.images),
            reason="reference (the trained model)"))

    def savedmodel(self, keep: bool) -> None:
        from vispipe.export.savedmodel import savedmodel_runner, write_models_config, write_savedmodel

        folder = self._path("savedmodel", "") if keep else self._path(".savedmodel", "")

        def export():
            self.savedmodel_dir = write_savedmodel(
                self.model, self.spec, folder, self.images[:4], version=self.options.version)
            base = os.path.join(self.final_dir, "savedmodel", self.spec.name)
            write_models_config(os.path.join(folder, "models.config"), self.spec.name, base)
            return {"signatures": ["serving_default", "serving_bytes", "classify"],
                    "version": self.options.version, "models_config": "savedmodel/models.config"}

        if not keep:  # Only TF.js needs it; its rows report a failure.
            try:
                export()
            except Exception as e:  # Recorded; the other formats go on.
                self.savedmodel_error = _reason(e)
            return
        version_dir = os.path.join(folder, self.spec.name, str(self.options.version))
        self.attempt("savedmodel", version_dir, export, lambda: savedmodel_runner(version_dir),
                     _MIN_AGREEMENT["float32"])

    def tflite(self, model, prefix: str, variants: Sequence[str], details: dict[str, Any],
               subdir: str = "tflite", max_drop: float | None = None) -> None:
        from vispipe.export.tflite import attach_files, convert_tflite, tflite_runner

        files = {LABELS_FILE: _labels_text(self.spec).encode(),
                 "export.json": json.dumps(self.spec.to_json(), indent=2).encode()}
        for variant in variants:
            path = self._path(subdir, f"{self.spec.name}_{prefix}{variant}.tflite")

            def export(variant=variant, path=path):
                convert_tflite(model, self.spec, path, variant, representative=self.calibration)
                attach_files(path, files)
                return {"variant": variant, "associated_files": sorted(files)}

            kind = {"float32": "float32", "float16": "float16"}.get(variant, "quantized")
            self.attempt(f"tflite_{prefix}{variant}", path, export,
                         lambda path=path: tflite_runner(path),
                         0.0 if max_drop is not None else _MIN_AGREEMENT[kind], details,
                         max_drop=max_drop)

    def pruned(self) -> None:
        from vispipe.export.pruning import prune_model

        for sparsity in self.options.sparsities:
            tag = f"pruned{round(sparsity * 100)}"
            try:
                pruned, report = prune_model(
                    self.model, self.train_x, self.train_y, sparsity,
                    epochs=self.options.prune_epochs, min_steps=self.options.prune_min_steps,
                    learning_rate=self.options.prune_learning_rate,
                    decay=self.options.prune_decay, seed=self.options.seed,
                    progress=self.options.progress)
            except Exception as e:  # The other sparsities and formats go on.
                self.results.append(FormatResult(format=f"tflite_{tag}", status="failed_export",
                                                 reason=_reason(e)))
                continue
            with open(self._path("pruned", f"{tag}.json"), "w", encoding="utf-8") as f:
                json.dump(report.to_json(), f, indent=2)
            details = {"target_sparsity": sparsity, "total_sparsity": report.total_sparsity,
                       "layers": report.layers}
            self.tflite(pruned, f"{tag}_", ("float32", "int8"), details, subdir="pruned",
                        max_drop=self.options.prune_max_drop)

    def coreml(self) -> None:
        from vispipe.export.coreml import (
            convert_coreml,
            coreml_runner,
            image_scale_bias,
            verify_coreml_spec,
        )

        scale, bias, exact = image_scale_bias(self.spec.preprocess, self.spec.image_shape[2])

        for weights in self.options.coreml_weights:
            path = self._path("coreml", f"{self.spec.name}_{weights}.mlpackage")
            spec_summary: dict[str, Any] = {}

            def export(weights=weights, path=path, summary=spec_summary):
                convert_coreml(self.model, self.spec, path, weights=weights,
                               metadata=self.options.metadata)
                summary.update(verify_coreml_spec(path, self.spec))
                return {"spec": summary, "image_scale": scale, "image_bias": bias,
                        "normalization_in": "image_input" if exact else "program"}

            if platform.system() == "Darwin":
                self.attempt(f"coreml_{weights}", path, export,
                             lambda path=path: coreml_runner(path, self.spec),
                             _MIN_AGREEMENT["float16" if weights == "float16" else "quantized"])
            else:
                self.attempt(f"coreml_{weights}", path, export, None, 0.0, note=(
                    f"spec verified; numeric parity needs macOS (this is {platform.system()})"))

    def tfjs(self) -> None:
        from vispipe.export.tfjs import convert_tfjs, tfjs_runner

        if not self.savedmodel_dir:
            self.results.append(FormatResult(
                format="tfjs", status="failed_export",
                reason=f"the SavedModel it converts from failed: {self.savedmodel_error}"))
            return
        for quantization in self.options.tfjs_quantizations:
            path = self._path("tfjs", quantization, "")

            def export(quantization=quantization, path=path):
                convert_tfjs(self.savedmodel_dir, path, quantization, self.spec.to_json())
                return {"weights": quantization}

            kind = quantization if quantization != "uint8" else "quantized"
            self.attempt(f"tfjs_{quantization}", path, export,
                         lambda p=path: tfjs_runner(p), _MIN_AGREEMENT[kind],
                         limit=self.options.tfjs_verify_limit)

    def _contract(self):
        """The traced contract shared by the ONNX and OpenVINO converters."""
        from vispipe.export.contract_graph import trace_contract

        if self._graph is None:
            self._graph = trace_contract(self.model, self.spec, self._path(".contract", ""))
        return self._graph

    def _beside(self, subdir: str, details: dict[str, Any]) -> dict[str, str]:
        """Writes labels.txt and export.json into `subdir`; returns them for embedding."""
        contract = {**self.spec.to_json(), "format": {subdir: details}}
        files = {LABELS_FILE: _labels_text(self.spec),
                 "export.json": json.dumps(contract, indent=2)}
        for name, text in files.items():
            with open(self._path(subdir, name), "w", encoding="utf-8") as f:
                f.write(text)
        return {"labels": json.dumps(list(self.spec.classes)),
                "export.json": files["export.json"]}

    def _failed_all(self, fmt: str, variants: Sequence[str], error: BaseException) -> None:
        reason = _reason(error)
        if isinstance(error, ImportError):
            reason += "; install the converters with: pip install 'vispipe[interop]'"
        self.results += [FormatResult(format=f"{fmt}_{v}", status="failed_export", reason=reason)
                         for v in variants]

    def onnx(self, variants: Sequence[str]) -> None:
        from vispipe.export import onnx

        try:
            base = self._path(".onnx", "float32.onnx")
            details = onnx.convert_onnx(self._contract(), base)
            metadata = self._beside("onnx", details)
        except Exception as e:  # Every variant needs it; the other formats go on.
            self._failed_all("onnx", variants, e)
            return
        for variant in variants:
            path = self._path("onnx", f"{self.spec.name}_{variant}.onnx")
            kind = variant if variant != "int8" else "quantized"
            self.attempt(f"onnx_{variant}", path, lambda v=variant, p=path: onnx.derive_onnx(
                base, p, v, calibration=self.calibration, metadata=metadata),
                lambda p=path: onnx.onnx_runner(p), _MIN_AGREEMENT[kind], details)

    def openvino(self, variants: Sequence[str]) -> None:
        from vispipe.export import openvino

        try:
            model, details = openvino.convert_openvino(self._contract())
            metadata = self._beside("openvino", details)
        except Exception as e:  # Every variant needs it; the other formats go on.
            self._failed_all("openvino", variants, e)
            return
        for variant in variants:
            path = self._path("openvino", variant, f"{self.spec.name}.xml")
            kind = variant if variant != "int8" else "quantized"
            self.attempt(f"openvino_{variant}", os.path.dirname(path),
                         lambda v=variant, p=path: openvino.write_openvino(
                             model, p, v, calibration=self.calibration, metadata=metadata),
                         lambda p=path: openvino.openvino_runner(p), _MIN_AGREEMENT[kind],
                         details)


def _reason(error: BaseException) -> str:
    last = traceback.format_exception_only(type(error), error)[-1].strip()
    return last[-500:]


def _labels_text(spec: RunSpec) -> str:
    return "".join(f"{c}\n" for c in spec.classes)


def export_model(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    formats: Sequence[str] | str | None = None,
    *,
    overwrite: bool = False,
    options: ExportOptions | None = None,
) -> dict[str, Any]:
    """Exports a trained run to every requested format and verifies each.

    Args:
        run_dir: A completed run folder.
        out_dir: The export folder to create.
        formats: Names from `FORMATS` or single variants such as
            "onnx_int8" (a list or "a,b"); None:
            `options.formats` (empty, the default: every format whose tools
            are installed; ONNX and OpenVINO need the `interop` extra).
        overwrite: Replace an existing `out_dir` (only once the new export
            is complete).
        options: Everything else (`ExportOptions`).

    Returns:
        The report: `{"name", "run_dir", "out_dir", "verify_split",
        "verify_images", "formats": [FormatResult as dict...], "markdown"}`.

    Raises:
        IncompleteRunError: An incomplete run folder, a different run
            format version, or no readable dataset.
        ValueError: Unknown format or option, or a representative set too
            small for calibration.
        FileExistsError: `out_dir` exists and `overwrite` is off.
        UnwritableOutputError: `out_dir` cannot be written (a PermissionError).

    Example:

    ```python
    report = export_model("runs/mnist", "exports/mnist", "tflite,coreml",
                          options=ExportOptions(sparsities=(0.8,)))
    ```
    """
    options = options or ExportOptions()
    formats = options.formats if formats is None else formats
    not_installed = [f for f in FORMATS if f not in installed_formats()] if not formats else []
    formats = _check_formats(formats)
    _check_options(options)
    out = _check_output(os.fspath(out_dir), overwrite)
    spec, model = load_run(run_dir, name=options.name, which=options.which, top_k=options.top_k)
    data = _load_data(spec, formats, options)

    with atomic_path(out, folder=True) as partial:
        exporter = _Exporter(spec, model, partial, out, options, data)
        exporter.keras()
        if "savedmodel" in formats or "tfjs" in formats:
            exporter.savedmodel(keep="savedmodel" in formats)
        if "tflite" in formats:
            exporter.tflite(model, "", ("float32", "float16", "dynamic_int8", "int8"), {})
        if "pruned" in formats:
            exporter.pruned()
        if "coreml" in formats:
            exporter.coreml()
        if "tfjs" in formats:
            exporter.tfjs()
        for fmt, run_format in (("onnx", exporter.onnx), ("openvino", exporter.openvino)):
            if _variants(fmt, formats):
                run_format(_variants(fmt, formats))
        for hidden in (".savedmodel", ".contract", ".onnx"):
            shutil.rmtree(os.path.join(partial, hidden), ignore_errors=True)
        contract = {**spec.to_json(), "version": options.version,
                    "artifacts": {r.format: r.path for r in exporter.results[1:] if r.path}}
        with open(os.path.join(partial, "export.json"), "w", encoding="utf-8") as f:
            json.dump(contract, f, indent=2)
        with open(os.path.join(partial, LABELS_FILE), "w", encoding="utf-8") as f:
            f.write(_labels_text(spec))
        context = {"name": spec.name, "run_dir": spec.run_dir, "out_dir": out,
                   "verify_split": exporter.split, "verify_images": int(len(exporter.labels)),
                   "platform": platform.platform()}
        if not_installed:
            context["not_installed"] = {f: "pip install 'vispipe[interop]'" for f in not_installed}
        markdown = write_report(partial, exporter.results, context)
    return {**context, "formats": [r.to_json() for r in exporter.results], "markdown": markdown}
