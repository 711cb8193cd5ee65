"""Web UI pages: escaping, path confinement, upload limits, token (no training)."""

from __future__ import annotations

import io
import os

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from vispipe.registry import Registry
from vispipe.ui import UISettings, create_app
from vispipe.ui.settings import UnsafeInputError, check_name, confine

EVIL = '<img src=x onerror=alert(1)> & "q" \'q\''


@pytest.fixture
def roots(tmp_path):
    data = tmp_path / "data"
    (data / "cats").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    return data


def _client(roots, **kwargs) -> TestClient:
    return TestClient(create_app(UISettings(data_roots=[str(roots)], **kwargs), start_jobs=False))


def test_confine_accepts_inside_and_rejects_traversal_and_symlinks(roots, tmp_path):
    assert confine("cats", [str(roots.resolve())]) == str((roots / "cats").resolve())
    os.symlink(tmp_path / "secret", roots / "link")
    for bad in ("../secret", str(tmp_path / "secret"), "cats/../../secret", "link", "/etc"):
        with pytest.raises(UnsafeInputError, match="outside the data roots"):
            confine(bad, [str(roots.resolve())])


def test_names_with_path_characters_are_rejected_and_html_is_allowed():
    assert check_name(EVIL) == EVIL.strip()
    for bad in ("a/b", "..", "../x", "a\\b", ".hidden", "x\x00y", "", "<b>x</b>"):
        with pytest.raises(UnsafeInputError):
            check_name(bad)


def test_home_shows_user_names_escaped(roots, tmp_path):
    registry = Registry.open()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    registry.add("run", EVIL, str(run_dir), {})
    registry.add("dataset", EVIL + " ds", str(tmp_path), {})
    html = _client(roots).get("/").text
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; &#34;q&#34; &#39;q&#39;" in html


def test_dataset_form_rejects_unsafe_name_and_paths_without_queueing(roots):
    client = _client(roots)
    response = client.post("/datasets/new", data={
        "name": "../escape", "source_kind": "folder", "source": "../secret"})
    assert response.status_code == 400
    assert "cannot be a folder name" in response.text
    assert "outside the data roots" in response.text
    assert Registry.open().list("job") == []


def test_dataset_form_echoes_bad_values_escaped(roots):
    response = _client(roots).post("/datasets/new", data={
        "name": "ok", "source_kind": "folder", "source": "cats", "height": "<b>12</b>"})
    assert response.status_code == 400
    assert "expected a whole number, got &#39;&lt;b&gt;12&lt;/b&gt;&#39;" in response.text
    assert "<b>12</b>" not in response.text


def test_dataset_form_validates_percentages_and_limits(roots):
    response = _client(roots).post("/datasets/new", data={
        "name": "ok", "source_kind": "folder", "source": "cats", "val_percent": "60",
        "test_percent": "50", "min_per_class": "5", "max_per_class": "3"})
    assert response.status_code == 400
    assert "val + test must be under 100%, got 110%" in response.text
    assert "expected 0 (all) or at least min per class (5), got 3" in response.text


def test_valid_dataset_form_queues_a_job_with_the_confined_path(roots):
    client = _client(roots)
    response = client.post("/datasets/new", data={
        "name": EVIL, "source_kind": "folder", "source": "cats"}, follow_redirects=False)
    assert response.status_code == 303
    (job,) = Registry.open().list("job")
    argv = job.params["argv"]
    assert argv[argv.index("--source") + 1] == str((roots / "cats").resolve())
    assert job.params["target"].endswith(EVIL.strip())
    page = client.get(response.headers["location"]).text
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def _png(size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size).save(buffer, "PNG")
    return buffer.getvalue()


def test_uploads_are_size_limited_and_type_checked(roots, tmp_path):
    run_id = Registry.open().add("run", "r", str(tmp_path / "run"), {})
    client = _client(roots, max_upload_bytes=200)
    big = client.post(f"/runs/{run_id}/classify",
                      files={"image": ("big.png", _png((200, 200)) + b"\0" * 300, "image/png")})
    assert big.status_code == 413
    text = client.post(f"/runs/{run_id}/classify",
                       files={"image": ("<x>.png", b"not an image", "image/png")})
    assert text.status_code == 415
    assert "is not a readable image" in text.json()["detail"]
    uploads = os.path.join(os.environ["VISPIPE_HOME"], "ui", "uploads")
    assert not os.path.isdir(uploads) or os.listdir(uploads) == []


def test_export_files_cannot_escape_the_export_folder(roots, tmp_path):
    out = tmp_path / "export"
    (out / "tfjs").mkdir(parents=True)
    (out / "tfjs" / "model.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("secret")
    registry = Registry.open()
    job_id = registry.add("job", "Export r", str(tmp_path / "job"), {
        "verb": "export", "argv": [], "target": str(out), "target_kind": "export"})
    client = _client(roots)
    assert client.get(f"/exports/{job_id}/file/tfjs/model.json").text == "{}"
    assert client.get(f"/exports/{job_id}/file/..%2Fsecret.txt").status_code == 404
    assert client.get(f"/exports/{job_id}/file/tfjs/../../secret.txt").status_code == 404


def test_token_is_required_when_set(roots):
    client = _client(roots, token="s3cret")
    assert client.get("/").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/?token=s3cret").status_code == 200
    assert client.get("/").status_code == 200  # The cookie set by ?token= is kept.


def test_pages_render_and_list_every_run_with_100_in_the_registry(roots, tmp_path):
    registry = Registry.open()
    for i in range(100):
        run_dir = tmp_path / f"run{i}"
        run_dir.mkdir()
        entry = registry.add("run", f"run {i}", str(run_dir), {})
        registry.finish(entry, "completed", {"best_val_accuracy": 0.9})
        registry.add("dataset", f"ds {i}", str(run_dir), {})
    client = _client(roots)
    for url in ("/", "/models/new", "/datasets/new"):
        response = client.get(url)
        assert response.status_code == 200
    assert client.get("/").text.count("Done after") == 100
