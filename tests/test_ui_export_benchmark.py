"""The run page shows each export's benchmark table, picks and plot (no TensorFlow; ~3 s)."""

from __future__ import annotations

import os
import re

from fastapi.testclient import TestClient

from vispipe.export.verify import FormatResult, write_report
from vispipe.registry import Registry
from vispipe.ui import UISettings, create_app


def _export_folder(out) -> None:
    """An export folder as `export_model` leaves it: artifacts and `export_report.json`."""
    rows = [FormatResult("keras", "passed", "", 400_000, 380_000, 0.95, 1.0, 0.0, 2.0),
            FormatResult("onnx_float32", "passed", "onnx/r_float32.onnx", 400_000, 370_000,
                         0.95, 1.0, 1e-6, 0.2),
            FormatResult("onnx_int8", "passed", "onnx/r_int8.onnx", 100_000, 90_000, 0.948,
                         0.997, 0.03, 0.1),
            FormatResult("tflite_float32", "passed", "tflite/r_float32.tflite", 400_000, 370_000,
                         0.95, 1.0, 1e-6, 0.2),
            FormatResult("tflite_dynamic_int8", "passed", "tflite/r_dynamic_int8.tflite",
                         200_000, 190_000, 0.949, 0.998, 0.01, 0.2),
            FormatResult("openvino_int8", "failed_export", reason="RuntimeError: no NNCF")]
    (out / "onnx").mkdir(parents=True)
    (out / "tflite").mkdir()
    for row in rows[1:5]:
        (out / row.path).write_bytes(b"\0" * 16)
    write_report(str(out), rows, {"name": "r", "verify_split": "test", "verify_images": 1000,
                                  "platform": "Linux"})


def test_run_page_shows_the_benchmark_of_each_export(tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "export"
    run_dir.mkdir()
    _export_folder(out)
    registry = Registry.open()
    run_id = registry.add("run", "r", str(run_dir), {})
    registry.finish(run_id, "completed", {})
    job_id = registry.add("job", "Export r", str(tmp_path / "job"), {
        "verb": "export", "argv": [], "target": str(out), "target_kind": "export"})
    registry.finish(job_id, "completed", {})
    os.makedirs(tmp_path / "job", exist_ok=True)
    (tmp_path / "job" / "run.txt").write_text(str(run_dir))
    settings = UISettings(data_roots=[str(tmp_path)])
    client = TestClient(create_app(settings, start_jobs=False), base_url="http://localhost")
    client.get(f"/?token={settings.token}")

    page = client.get(f"/runs/{run_id}").text
    table = re.search(rf'<table class="list" id="benchmark-{job_id}">(.*?)</table>', page, re.S)
    assert table, page
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table.group(1), re.S)
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in rows[1:]]
    assert [c[0] for c in cells] == ["keras", "onnx_float32", "onnx_int8", "tflite_float32",
                                     "tflite_dynamic_int8", "openvino_int8"]
    assert cells[2][5] == "4.0x" and cells[4][5] == "2.0x"  # against the format's float32
    assert "smallest within 0.5 points of Keras: <b>onnx_int8</b>" in page
    assert "most accurate (smallest drop from Keras): <b>onnx_float32</b>" in page
    assert 'title="RuntimeError: no NNCF"' in page
    plot = client.get(f"/exports/{job_id}/file/benchmark.png")
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
    drawn = os.path.getmtime(out / "benchmark.png")
    client.get(f"/runs/{run_id}")
    assert os.path.getmtime(out / "benchmark.png") == drawn  # drawn once, not on every visit
