"""Web UI pages: escaping, path confinement, upload limits, token (no training).

Requests go as a browser's do: the session starts at the token URL and posts
carry the page's CSRF token and Origin (`tests/test_ui_security.py` checks
that nothing else gets in).
"""

from __future__ import annotations

import io
import os
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from vispipe.configs import DatasetConfig
from vispipe.registry import Registry
from vispipe.ui import UISettings, create_app
from vispipe.ui.settings import UnsafeInputError, check_name, confine

from ui_helpers import browser_client, write_run

EVIL = '<img src=x onerror=alert(1)> & "q" \'q\''


@pytest.fixture
def roots(tmp_path):
    data = tmp_path / "data"
    (data / "cats").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    return data


def _client(roots, **kwargs) -> TestClient:
    return browser_client(roots, **kwargs)


def _cli_config(job):
    """What the job's `vispipe` command line resolves to, read by the CLI's own parser."""
    from vispipe.cli import build_parser
    from vispipe.cli_grammar import resolve

    argv = job.params["argv"]
    assert argv[-2] == "--config" and os.path.dirname(argv[-1]) == job.path
    return build_parser().parse_args(argv), resolve(build_parser().parse_args(argv))


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


def _png(size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size).save(buffer, "PNG")
    return buffer.getvalue()


def _class_folders(parent, classes=("cat", "dog")):
    for name in classes:
        (parent / name).mkdir(parents=True)
        (parent / name / "1.png").write_bytes(_png())
    return parent


def test_valid_dataset_form_queues_a_job_with_the_confined_path(roots):
    _class_folders(roots / "pets")
    client = _client(roots)
    response = client.post("/datasets/new", data={
        "name": EVIL, "source_kind": "folder", "source": "pets"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    (job,) = Registry.open().list("job")
    assert job.params["argv"][:2] == ["dataset", "create"]
    _, config = _cli_config(job)  # `vispipe dataset create --config <job>/job.yaml`
    assert config.dataset.source == str((roots / "pets").resolve())
    # The job itself refuses files outside the data roots too.
    assert config.dataset.data_roots == [str(roots.resolve())]
    assert config.dataset.output == job.params["target"] and job.params["target"].endswith(EVIL.strip())
    # The form's defaults are the config class's.
    assert config.dataset.image == DatasetConfig().image and config.dataset.val_percent == 25
    page = client.get(response.headers["location"]).text
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page



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


def test_a_token_is_required_by_default(roots):
    settings = UISettings(data_roots=[str(roots)])
    assert len(settings.token) == 48  # A fresh random one.
    client = TestClient(create_app(settings, start_jobs=False), base_url="http://localhost")
    assert client.get("/").status_code == 401
    assert client.get("/?token=wrong").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    headers = {"Authorization": f"Bearer {settings.token}"}
    assert client.get("/", headers=headers).status_code == 200
    assert client.get(f"/?token={settings.token}").status_code == 200
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


# --- delete -------------------------------------------------------------------

def _ui_folder(kind: str, name: str) -> str:
    path = os.path.join(os.environ["VISPIPE_HOME"], "ui", kind, name)
    os.makedirs(path)
    return path


def test_delete_removes_the_folder_its_entries_and_its_jobs(roots):
    client = _client(roots)
    run_dir = _ui_folder("runs", "r")
    registry = Registry.open()
    train = registry.add("job", "Train r", _ui_folder("jobs", "train"), {
        "verb": "train", "argv": [], "target": run_dir, "target_kind": "run"})
    registry.finish(train, "completed", {})
    evaluate = registry.add("job", "Evaluate r", _ui_folder("jobs", "eval"), {
        "verb": "evaluate", "argv": [], "target": os.path.join(run_dir, "eval-test"),
        "target_kind": "eval"})
    registry.finish(evaluate, "completed", {})
    run = registry.add("run", "r", run_dir, {})
    registry.finish(run, "completed", {})
    other = registry.add("run", "other", _ui_folder("runs", "other"), {})
    registry.finish(other, "completed", {})

    response = client.post(f"/delete/{run}", follow_redirects=False)
    assert response.status_code == 303
    assert [e.id for e in Registry.open().list()] == [other]
    for job_dir in ("train", "eval"):
        assert not os.path.exists(os.path.join(os.environ["VISPIPE_HOME"], "ui", "jobs", job_dir))
    assert not os.path.exists(run_dir)
    assert "/runs/" + str(other) in client.get("/").text


def test_delete_refuses_folders_outside_the_ui_and_busy_ones(roots, tmp_path):
    client = _client(roots)
    registry = Registry.open()
    outside = registry.add("run", "cli run", str(tmp_path / "cli-run"), {})
    (tmp_path / "cli-run").mkdir()
    assert client.post(f"/delete/{outside}").status_code == 403
    assert (tmp_path / "cli-run").is_dir() and registry.get(outside)

    run_dir = _ui_folder("runs", "busy")
    busy = registry.add("job", "Train busy", _ui_folder("jobs", "busy"), {
        "verb": "train", "argv": [], "target": run_dir, "target_kind": "run"})
    response = client.post(f"/delete/{busy}")
    assert response.status_code == 409 and f"in use by job {busy}" in response.json()["detail"]
    assert os.path.isdir(run_dir)


# --- job logs -----------------------------------------------------------------

def test_job_log_leaves_out_tensorflow_startup_noise(roots, tmp_path):
    registry = Registry.open()
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "log.txt").write_text(
        "$ vispipe train\n"
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "E0000 00:00:1795545433.095476   20892 cuda_dnn.cc:8579] Unable to register cuDNN factory: "
        "Attempting to register factory for plugin cuDNN when one has already been registered\n"
        "W0000 00:00:1795545433.121371   20892 computation_placer.cc:177] computation placer "
        "already registered. Please check linkage.\n"
        "Epoch 1/2\nvispipe train: error: out of memory\n")
    job = registry.add("job", "Train", str(job_dir), {"verb": "train", "argv": [], "target": "",
                                                       "target_kind": "run"})
    log = _client(roots).get(f"/jobs/{job}/status").json()["log"]
    assert log == "$ vispipe train\nEpoch 1/2\nvispipe train: error: out of memory"


# --- classify many --------------------------------------------------------------

CLASSES = ["cat", "dog", "bird"]


@pytest.fixture
def completed_run(tmp_path):
    """A registered, completed run folder whose model has three classes."""
    run_dir = tmp_path / "run"
    write_run(run_dir, CLASSES)
    registry = Registry.open()
    entry = registry.add("run", "pets", str(run_dir), {})
    registry.finish(entry, "completed", {})
    return registry.get(entry), run_dir


def _zip(members: dict[str, bytes]) -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _request_folders(run_dir) -> list[str]:
    return [name for name in os.listdir(run_dir) if name.startswith("classify-")]


def test_classify_many_list_paths_must_lie_in_the_data_roots(roots, completed_run):
    entry, run_dir = completed_run
    (roots / "cats" / "a.png").write_bytes(_png())
    listing = "cats/a.png cat\n# a comment\n../secret/b.png 1\n/etc/passwd\ncats/a.png 7\n"
    response = _client(roots).post(f"/runs/{entry.id}/classify-many", files={
        "inputs": ("<list>.txt", listing.encode(), "text/plain")})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "line 3: '../secret/b.png' is outside the data roots" in detail
    assert "line 4: '/etc/passwd' is outside the data roots" in detail
    assert "line 5: label 7 is out of range" in detail
    assert Registry.open().list("job") == [] and _request_folders(run_dir) == []


def test_classify_many_rejects_what_is_neither_list_nor_archive_and_oversize(roots, completed_run):
    import tarfile

    entry, run_dir = completed_run
    client = _client(roots, max_upload_bytes=4096)
    binary = client.post(f"/runs/{entry.id}/classify-many", files={
        "inputs": ("x.zip", _png() + b"\xff\x00", "application/zip")})
    assert binary.status_code == 415 and "neither a UTF-8 text list nor" in binary.json()["detail"]
    # 64 KiB of zeros compress to a few hundred bytes: within the upload limit,
    # over it once unpacked.
    bomb = io.BytesIO()
    with tarfile.open(fileobj=bomb, mode="w:gz") as archive:
        info = tarfile.TarInfo("cat/zeros.png")
        info.size = 65536
        archive.addfile(info, io.BytesIO(bytes(65536)))
    response = client.post(f"/runs/{entry.id}/classify-many", files={
        "inputs": ("bomb.tar.gz", bomb.getvalue(), "application/gzip")})
    assert response.status_code == 413 and "the upload limit per file" in response.json()["detail"]
    assert Registry.open().list("job") == [] and _request_folders(run_dir) == []


def test_classify_many_archive_queues_a_classify_job_with_folder_labels(roots, completed_run,
                                                                        tmp_path):
    entry, run_dir = completed_run
    archive = _zip({"photos/cat/1.png": _png(), "photos/dog/2.PNG": _png(),
                    "photos/unsorted/3.png": _png(), "../../" + EVIL + ".png": _png(),
                    "photos/readme.txt": b"hello", "__MACOSX/photos/._1.png": b"junk"})
    client = _client(roots)
    response = client.post(f"/runs/{entry.id}/classify-many", data={"top_k": "2"}, files={
        "inputs": ("photos.zip", archive, "application/zip")}, follow_redirects=False)
    assert response.status_code == 303, response.text
    (job,) = Registry.open().list("job")
    (folder,) = _request_folders(run_dir)
    folder = os.path.join(run_dir, folder)
    assert job.params["argv"][:-2] == ["classify", "--run", str(run_dir),
                                       os.path.join(folder, "inputs.txt"),
                                       "--out", os.path.join(folder, "predictions.csv")]
    assert _cli_config(job)[1].evaluate.top_k == 2  # From the job's config file.
    images = os.path.join(folder, "images")
    with open(os.path.join(folder, "inputs.txt")) as f:
        assert f.read().splitlines() == [os.path.join(images, "000000.png") + " 0",
                                         os.path.join(images, "000001.png") + " 1",
                                         os.path.join(images, "000002.png")]
    # Files are stored under names made up here: an archive's "../" never becomes a path.
    assert sorted(os.listdir(images)) == ["000000.png", "000001.png", "000002.png"]
    assert not [name for _, _, names in os.walk(tmp_path) for name in names if EVIL in name]
    page = client.get(f"/jobs/{job.id}")  # The job page leads to the results page.
    assert page.status_code == 200 and page.url.path == response.headers["location"]
    assert "3 images from archive photos.zip" in page.text
    assert "3 files were left out" in page.text
    assert "folders that are not classes of this model are unlabelled: unsorted" in page.text


def _finish_classify_job(folder: str, predictions) -> None:
    """Writes what `vispipe classify --csv` writes and marks the job completed."""
    from vispipe.evaluate.classify import write_predictions_csv

    write_predictions_csv(predictions, os.path.join(folder, "predictions.csv"))
    registry = Registry.open()
    (job,) = registry.list("job")
    registry.finish(job.id, "completed", {"returncode": 0})


def test_classify_many_results_show_accuracy_confusion_and_best_images(roots, completed_run):
    from vispipe.evaluate.classify import Prediction

    entry, run_dir = completed_run
    archive = _zip({f"{label}/{EVIL} {i}.png": _png((20 + i, 10)) for i, label in
                    enumerate(["cat", "cat", "dog", "bird", "bird"])})
    client = _client(roots)
    url = client.post(f"/runs/{entry.id}/classify-many", files={
        "inputs": ("set.zip", archive, "application/zip")}, follow_redirects=False
    ).headers["location"]
    folder = os.path.join(run_dir, _request_folders(run_dir)[0])
    with open(os.path.join(folder, "inputs.txt")) as f:
        paths = [line.rsplit(" ", 1)[0] for line in f.read().splitlines()]
    outcomes = [("cat", "cat", 0.9), ("cat", "dog", 0.6), ("dog", "dog", 0.8),
                ("bird", "bird", 0.7), ("bird", None, None)]
    _finish_classify_job(folder, [
        Prediction(path, top=[(predicted, p)] if predicted else [], label=label,
                   error=None if predicted else "truncated file")
        for path, (label, predicted, p) in zip(paths, outcomes)])

    page = client.get(url).text
    assert "75.00% of 4 labelled images" in page  # 3 of the 4 classified are right.
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    matrix = page[page.index('id="confusion-matrix"'):page.index("</table>", page.index(
        'id="confusion-matrix"'))]
    cells = [[cell.split(">")[-1] for cell in row.split("</td>")[:-1]]
             for row in matrix.split("</tr>")[1:-1]]
    assert cells == [["1", "1", ""], ["", "1", ""], ["", "", "1"]]  # cat, dog, bird rows
    best = page[page.index('id="best"'):page.index('id="images"')]
    assert best.index("<h3>cat</h3>") < best.index("<h3>dog</h3>") < best.index("<h3>bird</h3>")
    dog = best[best.index("<h3>dog</h3>"):best.index("<h3>bird</h3>")]
    assert dog.index("/image/2.png") < dog.index("/image/1.png")  # 80% before 60%.
    assert "true cat" in dog  # The wrong one says so.
    assert "truncated file" in page

    thumb = client.get(url + "/image/1.png")
    assert thumb.status_code == 200
    assert Image.open(io.BytesIO(thumb.content)).size == (21, 10)
    assert client.get(url + "/image/9.png").status_code == 404
    csv_text = client.get(url + "/predictions.csv").text
    assert csv_text.splitlines()[0].startswith("path,label,predicted,probability,error")


def test_classify_many_results_come_from_the_evaluate_functions_by_column_name(tmp_path):
    from vispipe.fileio import write_json_atomic
    from vispipe.ui.classify_many import Request, read_results

    folder = tmp_path / "request"
    folder.mkdir()
    write_json_atomic(folder / "request.json", Request("x.txt", "list", ["a", "b", "c"], [], 2).__dict__)
    # Columns in another order than `vispipe classify` writes them: read by name.
    (folder / "predictions.csv").write_text(
        "prob_1,class_1,error,probability,predicted,label,path,class_2,prob_2\n"
        "0.9,cat,,0.9,cat,cat,/a.png,dog,0.1\n"
        "0.6,dog,,0.6,dog,cat,/b.png,cat,0.4\n"
        ",,truncated file,,,dog,/c.png,,\n")
    results = read_results(str(folder), ["cat", "dog", "bird"])
    assert (results.accuracy, results.labelled, results.errors) == (0.5, 2, 1)
    assert results.matrix_classes == ["cat", "dog"] and results.confusion == [[1, 1], [0, 0]]
    assert results.rows[1].top == [("dog", 0.6), ("cat", 0.4)] and results.rows[2].name == "c"
    (folder / "predictions.csv").write_text(
        "path,label,predicted,probability,error,class_1,prob_1\n/a.png,cat,fox,0.9,,fox,0.9\n")
    with pytest.raises(ValueError, match="fox"):
        read_results(str(folder), ["cat", "dog", "bird"])


def test_classify_many_thumbnails_stay_inside_the_request_and_data_roots(roots, completed_run,
                                                                         tmp_path):
    from vispipe.evaluate.classify import Prediction

    entry, run_dir = completed_run
    secret = tmp_path / "secret" / "s.png"
    secret.write_bytes(_png())
    client = _client(roots)
    url = client.post(f"/runs/{entry.id}/classify-many", files={
        "inputs": ("one.zip", _zip({"cat/a.png": _png()}), "application/zip")},
        follow_redirects=False).headers["location"]
    folder = os.path.join(run_dir, _request_folders(run_dir)[0])
    # A predictions file naming a file elsewhere (edited by hand, say) is not served.
    _finish_classify_job(folder, [Prediction(str(secret), top=[("cat", 1.0)])])
    assert client.get(url + "/image/0.png").status_code == 403


# --- custom network preview -------------------------------------------------------

def test_network_preview_reports_a_syntax_error_without_building(roots):
    response = _client(roots).post("/models/network-preview", data={
        "custom_code": "def build(input_shape, num_classes):\n    return (\n"})
    assert response.status_code == 400
    assert response.json()["errors"]["custom_code"].startswith("Python syntax error on line 2")
    assert Registry.open().list("job") == []


def _layer(name: str, kind: str, inputs: list[str], params: int = 0) -> dict:
    return {"name": name, "type": kind, "output_shape": [None, 8, 8, 4], "params": params,
            "inputs": inputs}


def _layer_graph(svg: str):
    """The SVG parsed as XML (as the browser does): {name: layer group}, {(from, to): path}."""
    from xml.etree import ElementTree

    ns = {"s": "http://www.w3.org/2000/svg"}
    root = ElementTree.fromstring(svg)
    layers = {g.get("data-layer"): g for g in root.iterfind(".//s:g[@class='layer']", ns)}
    edges = {(p.get("data-from"), p.get("data-to")): p
             for p in root.iterfind(".//s:path[@class='edge']", ns)}
    return root, layers, edges


def test_layer_graph_rows_follow_the_longest_path_and_merges_read_every_branch():
    from vispipe.ui.layer_graph import BOX_W, layer_graph_svg, layout_layers

    layers = [_layer("in", "InputLayer", []),
              _layer("left", "Conv2D", ["in"], 40), _layer("left2", "Conv2D", ["left"], 40),
              _layer("right", "Conv2D", ["in"], 40),
              _layer("join", "Add", ["left2", "right"]),
              _layer("cat", "Concatenate", ["join", "in", "in"]),  # A shortcut, read twice.
              _layer("logits", "Dense", ["cat"], 90)]
    graph = layout_layers(layers)
    assert graph.depth == {"in": 0, "left": 1, "left2": 2, "right": 1, "join": 3, "cat": 4,
                           "logits": 5}
    assert sorted(graph.edges) == sorted([
        ("in", "left"), ("left", "left2"), ("in", "right"), ("left2", "join"),
        ("right", "join"), ("join", "cat"), ("in", "cat"), ("cat", "logits")])
    # The in -> cat shortcut runs beside the boxes of the three rows it skips.
    shortcut = graph.paths[("in", "cat")]
    assert len(shortcut) == 2 + 2 * 3
    for x, y in shortcut[1:-1]:
        for name, (cx, cy) in graph.centers.items():
            if name not in ("in", "cat") and abs(cy - y) < 30:
                assert abs(cx - x) > BOX_W / 2, (name, x, y)
    # Every arrow ends on the top edge of its target's box.
    for (_, target), points in graph.paths.items():
        cx, _ = graph.centers[target]
        assert abs(points[-1][0] - cx) < BOX_W / 2

    _, boxes, arrows = _layer_graph(layer_graph_svg(layers))
    assert list(boxes) == [layer["name"] for layer in layers]
    assert boxes["join"].get("data-depth") == "3"
    assert set(arrows) == set(graph.edges)
    assert "Conv2D · 40 params" in [t.text for t in boxes["left"]]


def test_layer_graph_escapes_user_supplied_names():
    from vispipe.ui.layer_graph import layer_graph_svg

    evil = '<script>alert(1)</script>" onload="x'
    svg = layer_graph_svg([_layer("in", "InputLayer", []), _layer(evil, "Dense\x07", ["in"])])
    assert "<script" not in svg and 'onload="x' not in svg
    root, boxes, arrows = _layer_graph(svg)
    assert not [e for e in root.iter() if e.tag.endswith("script")]
    assert list(boxes) == ["in", evil]
    assert set(arrows) == {("in", evil)}
    label = [t.text for t in boxes[evil] if t.tag.endswith("text")][0]
    assert label == evil[:29] + "…"  # Long names are cut; the tooltip has all of it.
    assert evil in boxes[evil][0].text


def test_layer_graph_of_a_200_layer_residual_network_is_quick_and_boxes_do_not_overlap():
    from vispipe.ui.layer_graph import BOX_H, BOX_W, layer_graph_svg, layout_layers

    layers, x = [_layer("input", "InputLayer", [])], "input"
    for block in range(28):  # conv-bn-relu x2 beside a shortcut conv, joined by Add.
        names = [f"b{block}_{part}" for part in ("c1", "n1", "r1", "c2", "n2", "short", "add")]
        chain = x
        for name, kind in zip(names[:5], ("Conv2D", "BatchNormalization", "ReLU", "Conv2D",
                                          "BatchNormalization")):
            layers.append(_layer(name, kind, [chain], 100))
            chain = name
        layers += [_layer(names[5], "Conv2D", [x], 100), _layer(names[6], "Add", [chain, names[5]])]
        x = names[6]
    layers.append(_layer("logits", "Dense", [x], 10))
    assert len(layers) == 198

    start = time.perf_counter()
    svg = layer_graph_svg(layers)
    assert time.perf_counter() - start < 1.0
    graph = layout_layers(layers)
    assert graph.depth["logits"] == 28 * 6 + 1
    boxes = sorted(graph.centers.values())
    for i, (ax, ay) in enumerate(boxes):
        for bx, by in boxes[i + 1:]:
            assert abs(ax - bx) >= BOX_W or abs(ay - by) >= BOX_H
    assert f'width="{graph.width:.0f}"' in svg and graph.width < 2 * BOX_W + 100


def test_network_preview_returns_the_layer_graph_with_names_escaped(roots, monkeypatch):
    from vispipe.ui import network_summary

    async def built(path, shape, classes):  # Stands in for the TensorFlow child process.
        return {"layers": [_layer("in", "InputLayer", []), _layer(EVIL, "Dense", ["in"], 50)],
                "total_params": 50, "trainable_params": 50}

    monkeypatch.setattr(network_summary, "describe_network", built)
    response = _client(roots).post("/models/network-preview", data={
        "custom_code": "def build(input_shape, num_classes):\n    pass\n"})
    assert response.status_code == 200
    svg = response.json()["graph_svg"]
    assert "<img" not in svg
    _, boxes, arrows = _layer_graph(svg)
    assert list(boxes) == ["in", EVIL] and set(arrows) == {("in", EVIL)}


# --- devices ----------------------------------------------------------------------

def test_gpus_are_counted_from_the_driver_and_cuda_visible_devices(tmp_path):
    from vispipe.ui.devices import count_gpus

    assert count_gpus({}, str(tmp_path)) == 0
    for bus in ("0000:17:00.0", "0000:65:00.0", "0000:b3:00.0"):
        (tmp_path / "driver" / "nvidia" / "gpus" / bus).mkdir(parents=True)
    assert count_gpus({}, str(tmp_path)) == 3
    assert count_gpus({"CUDA_VISIBLE_DEVICES": "1"}, str(tmp_path)) == 1
    assert count_gpus({"CUDA_VISIBLE_DEVICES": "0,2"}, str(tmp_path)) == 2
    assert count_gpus({"CUDA_VISIBLE_DEVICES": ""}, str(tmp_path)) == 0
    assert count_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, str(tmp_path)) == 0
    assert count_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,1"}, str(tmp_path)) == 1


_TRAIN_FORM = {"network": "lenet", "epochs": "1", "batch_size": "8", "base_lr": "0.01",
               "policy": "fixed", "optimizer": "sgd", "seed": "1", "val_interval": "1",
               "snapshot_interval": "1"}


def _dataset_entry(tmp_path) -> int:
    registry = Registry.open()
    entry = registry.add("dataset", "d", str(tmp_path / "d"), {})
    (tmp_path / "d").mkdir(parents=True)
    registry.finish(entry, "completed", {"classes": 2})
    return entry


def test_new_model_offers_only_the_device_options_this_machine_has(roots, tmp_path):
    from vispipe.ui.devices import capabilities

    caps = capabilities()
    client = _client(roots)
    page = client.get("/models/new").text
    assert ('name="mixed_precision"' in page) == (caps.gpus > 0)
    assert ('name="distributed"' in page) == (len(caps.distributed) > 1)
    assert (">mirrored</option>" in page) == (caps.gpus >= 2)
    form = dict(_TRAIN_FORM, name="m", dataset=str(_dataset_entry(tmp_path)),
                mixed_precision="on", distributed="mirrored")
    response = client.post("/models/new", data=form, follow_redirects=False)
    if caps.gpus >= 2:
        assert response.status_code == 303
        config = _cli_config(Registry.open().list("job")[0])[1]
        assert config.train.mixed_precision == "on" and config.train.distributed == "mirrored"
    else:
        assert response.status_code == 400
        if not caps.gpus:
            assert "expected one of auto, off, got &#39;on&#39;" in response.text
        assert "got &#39;mirrored&#39;" in response.text


def test_horovod_training_runs_under_horovodrun(roots, tmp_path):
    from vispipe.ui.devices import horovodrun_path

    if horovodrun_path() is None:
        pytest.skip("horovod is not installed (make horovod)")
    client = _client(roots)
    assert ">horovod</option>" in client.get("/models/new").text
    response = client.post("/models/new", data=dict(
        _TRAIN_FORM, name="hvd", dataset=str(_dataset_entry(tmp_path)), distributed="horovod",
        processes="2"), follow_redirects=False)
    assert response.status_code == 303, response.text
    (job,) = Registry.open().list("job")
    assert job.params["launcher"] == [horovodrun_path(), "-np", "2", "--gloo", "-H", "localhost:2"]
    assert _cli_config(job)[1].train.distributed == "horovod"
    too_many = client.post("/models/new", data=dict(
        _TRAIN_FORM, name="hvd2", dataset=str(_dataset_entry(tmp_path / "x")),
        distributed="horovod", processes="100000"))
    assert too_many.status_code == 400 and "got 100000" in too_many.text
    assert len(Registry.open().list("job")) == 1


# --- dataset samples --------------------------------------------------------------

def test_tfrecord_examples_are_read_without_tensorflow(tmp_path):
    from vispipe.data.create import serialize_example
    from vispipe.ui.samples import iter_records, parse_example, read_record

    records = [serialize_example({"image/encoded": _png(), "image/format": b"png",
                                  "image/class/label": label, "image/height": 300})
               for label in (0, 2, 130)]
    path = tmp_path / "train-00000-of-00001.tfrecord"
    with open(path, "wb") as f:
        for data in records:  # TFRecord framing; the reader does not check the CRCs.
            f.write(len(data).to_bytes(8, "little") + bytes(4) + data + bytes(4))
    found = list(iter_records(str(path)))
    assert [parse_example(data)["image/class/label"] for _, data in found] == [0, 2, 130]
    assert parse_example(read_record(str(path), found[2][0])) == {
        "image/encoded": _png(), "image/format": b"png", "image/class/label": 130,
        "image/height": 300}
    with open(path, "ab") as f:
        f.write(b"\x05")
    with pytest.raises(ValueError, match="truncated record header"):
        list(iter_records(str(path)))


def test_a_job_runs_under_its_launcher(tmp_path):
    from vispipe.ui.jobs import JobQueue

    # The launcher points the job at another registry; only a command run
    # through it can list the entry that exists there alone.
    other = tmp_path / "other-home"
    Registry.open(str(other / "registry.db")).add("dataset", "only-in-other", str(tmp_path), {})
    queue = JobQueue(UISettings(home=str(tmp_path / "ui")))
    job_id = queue.submit("List", "registry", ["registry", "--kind", "dataset"],
                          launcher=["/usr/bin/env", f"VISPIPE_HOME={other}"])
    deadline = time.monotonic() + 60
    while Registry.open().get(job_id).status == "running" and time.monotonic() < deadline:
        queue.tick()
        time.sleep(0.1)
    job = Registry.open().get(job_id)
    assert job.status == "completed"
    with open(os.path.join(job.path, "log.txt")) as f:
        log = f.read()
    assert log.startswith(f"$ /usr/bin/env VISPIPE_HOME={other} vispipe registry --kind dataset")
    assert "only-in-other" in log


# --- structure --------------------------------------------------------------------

def test_ui_modules_import_each_other_one_way():
    # Issue 11: no import cycle, not even through an import inside a function.
    import ast

    import vispipe.ui

    folder = os.path.dirname(vispipe.ui.__file__)
    imports: dict[str, set[str]] = {}
    for name in os.listdir(folder):
        if name.endswith(".py") and name != "__init__.py":
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            imports[name[:-3]] = {node.module.rsplit(".", 1)[1] for node in ast.walk(tree)
                                  if isinstance(node, ast.ImportFrom) and node.module
                                  and node.module.startswith("vispipe.ui.")}

    def reached(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for module in imports.get(todo.pop(), ()):
                if module not in seen:
                    seen.add(module)
                    todo.append(module)
        return seen

    assert "templating" in imports["pages_runs"] and "uploads" in imports["pages_classify"]
    assert [m for m in imports if m in reached(m)] == []
