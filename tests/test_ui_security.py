"""The web UI against hostile requests: one test (or more) per finding of issue 10.

1 cross-site forms run nothing; 2 foreign Host names and the security headers;
3 dataset sources confined to the data roots; 4 export zips without symlinks;
5 no open redirect; 6 archives, image bombs and large uploads; 7 jobs run
vispipe's own code; 9 the token leaves the address bar. Requests are the
ones a browser (or a page of another site in it) sends.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.error import HTTPError
from urllib.request import HTTPCookieProcessor, build_opener

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from vispipe.registry import Registry
from vispipe.ui import UISettings, create_app
from vispipe.ui.jobs import JobQueue, read_job

from ports import free_port
from ui_helpers import write_run

TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "vispipe", "ui", "templates")
EVIL = "http://evil.example"


def _png(size=(8, 8), color=0) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def roots(tmp_path):
    """A data root with a two-class folder `pets`, and a secret folder beside it."""
    data = tmp_path / "data"
    for name in ("cat", "dog"):
        (data / "pets" / name).mkdir(parents=True)
        (data / "pets" / name / "1.png").write_bytes(_png())
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "s.png").write_bytes(_png(color=255))
    return data


def _app(roots, **kwargs):
    settings = UISettings(data_roots=[str(roots)], **kwargs)
    return settings, create_app(settings, start_jobs=False)


def _browser(app, settings) -> TestClient:
    """A browser session: opened at the token URL; posts carry the page's CSRF token."""
    client = TestClient(app, base_url="http://localhost")
    page = client.get(f"/?token={settings.token}" if settings.token else "/")
    token = re.search(r'<meta name="csrf-token" content="(\w+)">', page.text).group(1)
    client.headers.update({"Origin": "http://localhost", "X-CSRF-Token": token})
    return client


def _script(app, settings) -> TestClient:
    """A script: the token in the Authorization header, no cookies, no Origin."""
    return TestClient(app, base_url="http://localhost",
                      headers={"Authorization": f"Bearer {settings.token}"})


def _jobs() -> list:
    return [read_job(e) for e in Registry.open().list("job")]


def _run_first_job(queue: JobQueue, timeout_s: float = 180):
    """Runs the queue until the first job has ended; returns it and its log."""
    deadline = time.monotonic() + timeout_s
    while _jobs()[-1].status in ("queued", "running") and time.monotonic() < deadline:
        queue.tick()
        time.sleep(0.1)
    job = _jobs()[-1]
    with open(job.log_path, encoding="utf-8") as f:
        return job, f.read()


@dataclass
class Targets:
    """What a forged request could act on: a dataset, a UI run, a queued job."""

    dataset: int
    run: int
    run_dir: str
    job: int


def _targets(app, settings, tmp_path) -> Targets:
    registry = Registry.open()
    dataset = registry.add("dataset", "d", str(tmp_path / "d"), {})
    (tmp_path / "d").mkdir()
    registry.finish(dataset, "completed", {"classes": 2})
    run_dir = os.path.join(settings.folder("runs"), "r")
    os.makedirs(run_dir)
    run = registry.add("run", "r", run_dir, {})
    registry.finish(run, "completed", {})
    job = app.state.queue.submit("Train q", "train", ["train"], target="", target_kind="run")
    return Targets(dataset, run, run_dir, job)


# --- 1: cross-site request forgery ---------------------------------------------------

def _forged_forms(targets: Targets, code: str) -> list[tuple[str, dict[str, str]]]:
    """(action, fields) of every state-changing form a page of another site would post."""
    return [
        ("/models/network-preview", {"custom_code": code}),
        ("/models/new", {"name": "forged", "dataset": str(targets.dataset), "network": "custom",
                         "custom_code": code, "epochs": "1"}),
        ("/datasets/new", {"name": "forged", "source_kind": "folder", "source": "pets"}),
        (f"/runs/{targets.run}/export", {"format_savedmodel": "on"}),
        (f"/delete/{targets.run}", {"x": "1"}),
        (f"/jobs/{targets.job}/abort", {"x": "1"}),
    ]


@pytest.mark.parametrize("mode", ["default", "no-token", "logged-in"])
def test_cross_site_form_posts_run_no_code_and_start_no_job(roots, tmp_path, mode):
    # default: a token is required and the other site's page has none; no-token: the
    # --no-token trade-off; logged-in: the browser holds the UI's cookies and sends
    # them (a page on another port of the same host is same-site).
    settings, app = _app(roots, **({"token": None} if mode == "no-token" else {}))
    targets = _targets(app, settings, tmp_path)
    client = TestClient(app, base_url="http://localhost")
    if mode == "logged-in":
        client = _browser(app, settings)
        del client.headers["X-CSRF-Token"]  # The other site's page cannot read it.
    marker = tmp_path / "marker"
    code = (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
            "def build(input_shape, num_classes):\n    raise SystemExit('never built')\n")
    for action, fields in _forged_forms(targets, code):
        urlencoded = client.post(action, data=fields, headers={"Origin": EVIL},
                                 follow_redirects=False)
        multipart = client.post(action, files={k: (None, v) for k, v in fields.items()},
                                headers={"Origin": EVIL}, follow_redirects=False)
        expected = 401 if mode == "default" else 403
        assert (urlencoded.status_code, multipart.status_code) == (expected, expected), action
    assert not marker.exists()  # The posted code never ran ...
    assert [(j.id, j.status) for j in _jobs()] == [(targets.job, "queued")]  # ... no job ...
    assert os.path.isdir(targets.run_dir)  # ... nothing deleted ...
    networks = os.path.join(settings.home, "networks")
    assert not os.path.isdir(networks) or os.listdir(networks) == []  # ... or written.


def test_a_pages_post_needs_its_session_csrf_token_and_origin(roots, tmp_path):
    settings, app = _app(roots)
    targets = _targets(app, settings, tmp_path)
    client = _browser(app, settings)
    token = client.headers.pop("X-CSRF-Token")
    del client.headers["Origin"]
    other_session = _browser(app, settings).headers["X-CSRF-Token"]
    refused = [
        {"Origin": "http://localhost"},
        {"Origin": "http://localhost", "X-CSRF-Token": "0" * 64},
        {"Origin": "http://localhost", "X-CSRF-Token": other_session},
        {"X-CSRF-Token": token},  # Neither Origin nor Referer.
        {"Origin": "null", "X-CSRF-Token": token},  # A sandboxed frame, a data: URL.
        {"Origin": "http://localhost:8080", "X-CSRF-Token": token},  # Another port.
        {"Referer": f"{EVIL}/page", "X-CSRF-Token": token},
    ]
    for headers in refused:
        response = client.post(f"/jobs/{targets.job}/abort", headers=headers)
        assert response.status_code == 403, headers
    assert _jobs()[0].status == "queued"
    # The form field works as the header does; a Referer stands in for a missing Origin.
    response = client.post(f"/jobs/{targets.job}/abort", data={"csrf_token": token},
                           headers={"Referer": "http://localhost/"}, follow_redirects=False)
    assert response.status_code == 303
    assert _jobs()[0].status == "aborted"
    # A script with the token in Authorization is no page: it needs neither.
    other = app.state.queue.submit("Train q2", "train", ["train"], target_kind="run")
    response = _script(app, settings).post(f"/jobs/{other}/abort", follow_redirects=False)
    assert response.status_code == 303
    # Without a token there is no header that stands in for the CSRF token.
    settings, app = _app(roots, token=None)
    third = app.state.queue.submit("Train q3", "train", ["train"], target_kind="run")
    response = TestClient(app, base_url="http://localhost").post(
        f"/jobs/{third}/abort", headers={"Authorization": "Bearer x", "Origin": "http://localhost"})
    assert response.status_code == 403


# --- 2: DNS rebinding, security headers -------------------------------------------------

def test_a_foreign_host_name_is_refused(roots):
    settings, app = _app(roots, token=None)
    client = _browser(app, settings)
    for host in ("evil.example:5055", "evil.example", "127.0.0.1.evil.example:5000"):
        page = client.get("/", headers={"Host": host})
        assert page.status_code == 400 and "not a name this server was started for" in page.text
        assert "<html" not in page.text
        # The rebinding page's own origin is "same-origin" to itself: refused all the same.
        post = client.post("/datasets/new", headers={"Host": host, "Origin": f"http://{host}"},
                           data={"name": "rebound", "source_kind": "folder", "source": "pets"})
        assert post.status_code == 400
    assert _jobs() == []
    for host in ("localhost:5000", "127.0.0.1:5000", "[::1]:5000", "LOCALHOST"):
        assert client.get("/", headers={"Host": host}).status_code == 200
    from vispipe.ui.settings import LOCAL_HOSTS  # Names beyond those: --allowed-host.

    _, named = _app(roots, token=None, allowed_hosts=[*LOCAL_HOSTS, "gpu-box.lan"])
    assert TestClient(named).get("/", headers={"Host": "gpu-box.lan:5000"}).status_code == 200
    _, anything = _app(roots, token=None, allowed_hosts=["*"])
    assert TestClient(anything).get("/", headers={"Host": "evil.example"}).status_code == 200


def test_every_response_carries_the_security_headers(roots):
    settings, app = _app(roots)
    client = _browser(app, settings)
    responses = [client.get("/"), client.get("/static/app.js"), client.get("/api/lr-preview"),
                 client.get("/runs/999"), TestClient(app, base_url="http://localhost").get("/"),
                 client.get("/", headers={"Host": "evil.example"}),
                 client.post("/jobs/1/abort", headers={"Origin": EVIL})]
    assert [r.status_code for r in responses] == [200, 200, 200, 404, 401, 400, 403]
    for response in responses:
        policy = response.headers["content-security-policy"]
        assert "script-src 'self';" in policy and "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] in ("same-origin", "no-referrer")


def test_pages_hold_no_inline_script_and_every_post_form_its_csrf_field():
    for name in sorted(os.listdir(TEMPLATES)):
        with open(os.path.join(TEMPLATES, name), encoding="utf-8") as f:
            html = f.read()
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in tag or 'type="application/json"' in tag, (name, tag)
        assert not re.search(r"\son[a-z]+=", html), name  # onclick=, onsubmit=, ...
        assert "javascript:" not in html and "style=" not in html, name
        forms = re.findall(r"<form\b[^>]*>", html)
        posts = [f for f in forms if 'method="post"' in f]
        assert len(re.findall(r'<form\b[^>]*method="post"[^>]*>\{\{ csrf_input \}\}', html)) \
            == len(posts), name


# --- 3: data-root confinement --------------------------------------------------------

def _lists(roots, line: str) -> dict[str, str]:
    (roots / "lists").mkdir()
    (roots / "lists" / "train.txt").write_text(f"{roots}/pets/cat/1.png 0\n{line}\n")
    (roots / "lists" / "labels.txt").write_text("cat\ndog\n")
    return {"name": "listed", "source_kind": "lists", "train_list": "lists/train.txt",
            "labels_file": "lists/labels.txt", "min_per_class": "1"}


def test_dataset_list_lines_outside_the_data_roots_are_refused(roots, tmp_path):
    settings, app = _app(roots)
    form = _lists(roots, f"{tmp_path}/secret/s.png 1")
    response = _browser(app, settings).post("/datasets/new", data=form)
    assert response.status_code == 400
    assert "/secret/s.png&#39; is outside the data roots" in response.text
    assert _jobs() == []


@pytest.mark.parametrize("link", ["class folder", "file"])
def test_dataset_folders_with_symlinks_out_of_the_data_roots_are_refused(roots, tmp_path, link):
    if link == "class folder":
        os.symlink(tmp_path / "secret", roots / "pets" / "secret")
    else:
        os.symlink(tmp_path / "secret" / "s.png", roots / "pets" / "dog" / "2.png")
    settings, app = _app(roots)
    response = _browser(app, settings).post("/datasets/new", data={
        "name": "linked", "source_kind": "folder", "source": "pets", "min_per_class": "1"})
    assert response.status_code == 400
    assert "is outside the data roots" in response.text and "secret/s.png" in response.text
    assert _jobs() == []


def test_the_dataset_job_refuses_a_symlink_swapped_in_after_the_form(roots, tmp_path):
    # The form is checked, then the dog folder becomes a link to the secret one: the
    # job itself (`vispipe dataset create --data-root`) refuses it, so no dataset and
    # no sample image ever holds the secret file.
    settings, app = _app(roots)
    client = _browser(app, settings)
    response = client.post("/datasets/new", data={
        "name": "swapped", "source_kind": "folder", "source": "pets", "min_per_class": "1",
        "val_percent": "0", "height": "8", "width": "8"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    shutil.rmtree(roots / "pets" / "dog")
    os.symlink(tmp_path / "secret", roots / "pets" / "dog")
    job, log = _run_first_job(JobQueue(settings))
    assert job.status == "failed", log
    assert "is outside the data roots" in log and "secret/s.png" in log
    (dataset,) = Registry.open().list("dataset")
    assert dataset.status == "failed" and not os.path.exists(dataset.path)
    for label in (0, 1):
        assert client.get(f"/datasets/{dataset.id}/sample/{label}/0.png").status_code == 404


def test_dataset_samples_are_read_only_from_the_dataset_folder(tmp_path):
    from vispipe.data.format import DatasetInfo
    from vispipe.ui.samples import sample_index

    (tmp_path / "ds").mkdir()
    info = DatasetInfo(path=str(tmp_path / "ds"), classes=["a", "b"], height=8, width=8,
                       channels=1, encoding="png", split_counts={"train": 1},
                       class_counts={"train": {"a": 1}}, shards={"train": ["../x.tfrecord"]},
                       mean_pixel=[0.0], std_pixel=[1.0], content_hash="h")
    with pytest.raises(ValueError, match="outside the dataset folder"):
        sample_index(info, "train", 4)


# --- 4: export zips ----------------------------------------------------------------

def test_the_export_zip_holds_no_symlinked_file(roots, tmp_path):
    out = tmp_path / "export"
    (out / "savedmodel").mkdir(parents=True)
    (out / "savedmodel" / "model.pb").write_bytes(b"model")
    os.symlink("/etc/hostname", out / "savedmodel" / "hostname")
    os.symlink(tmp_path / "secret", out / "secrets")
    registry = Registry.open()
    job = registry.add("job", "Export r", str(tmp_path / "job"), {
        "verb": "export", "argv": [], "target": str(out), "target_kind": "export"})
    registry.finish(job, "completed", {})
    settings, app = _app(roots)
    response = _browser(app, settings).get(f"/exports/{job}.zip")
    assert response.status_code == 200
    assert zipfile.ZipFile(io.BytesIO(response.content)).namelist() == [
        "export/savedmodel/model.pb"]


# --- 5: redirects ------------------------------------------------------------------

def test_abort_redirects_only_to_pages_of_this_server(roots):
    settings, app = _app(roots)
    client = _script(app, settings)
    for form, headers, expected in [
            ({}, {"Referer": f"{EVIL}/phish"}, "/jobs/{id}"),
            ({"next": "//evil.example/phish"}, {}, "/jobs/{id}"),
            ({"next": f"{EVIL}/phish"}, {}, "/jobs/{id}"),
            ({"next": "/\\evil.example"}, {}, "/jobs/{id}"),
            ({"next": "/runs/3#serve"}, {"Referer": f"{EVIL}/phish"}, "/runs/3#serve")]:
        job = app.state.queue.submit("Train", "train", ["train"], target_kind="run")
        response = client.post(f"/jobs/{job}/abort", data=form, headers=headers,
                               follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == expected.format(id=job), form


# --- 6: archives, image bombs and uploads off the event loop --------------------------

def _completed_run(tmp_path, classes=("cat", "dog")) -> int:
    run_dir = tmp_path / "run"
    write_run(run_dir, classes)
    registry = Registry.open()
    entry = registry.add("run", "pets", str(run_dir), {})
    registry.finish(entry, "completed", {})
    return entry


def _tar_header(name: bytes) -> bytes:
    """The 512-byte ustar header of an empty regular file."""
    header = bytearray(512)
    header[:len(name)] = name
    for at, field in ((100, b"0000644\0"), (108, b"0000000\0"), (116, b"0000000\0"),
                      (124, b"00000000000\0"), (136, b"00000000000\0"), (148, b" " * 8),
                      (156, b"0"), (257, b"ustar\x0000")):
        header[at:at + len(field)] = field
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def test_an_archive_of_100000_members_is_refused_at_the_entry_limit(roots, tmp_path):
    archive = gzip.compress(_tar_header(b"cat/1.png") * 100_000 + bytes(1024), 1)
    assert len(archive) < 1 << 20  # Well inside the upload limit.
    run = _completed_run(tmp_path)
    settings, app = _app(roots)
    response = _browser(app, settings).post(f"/runs/{run}/classify-many", files={
        "inputs": ("many.tar.gz", archive, "application/gzip")})
    assert response.status_code == 413
    from vispipe.ui.classify_many import MAX_ARCHIVE_ENTRIES

    assert f"more than {MAX_ARCHIVE_ENTRIES} entries" in response.json()["detail"]
    assert _jobs() == [] and not [n for n in os.listdir(tmp_path / "run")
                                  if n.startswith("classify-")]


def test_archive_preparation_leaves_other_requests_served(roots, tmp_path, monkeypatch):
    from vispipe.ui import pages_classify

    started, answered, outcome = threading.Event(), threading.Event(), []

    def slow_prepare(*args):  # Stands in for unpacking a large archive.
        started.set()
        outcome.append(answered.wait(20))
        raise pages_classify.BadUpload("stopped here")

    monkeypatch.setattr(pages_classify, "prepare_request", slow_prepare)
    run = _completed_run(tmp_path)
    settings, app = _app(roots)
    with _browser(app, settings) as client:
        upload = threading.Thread(target=client.post, args=(f"/runs/{run}/classify-many",), kwargs={
            "files": {"inputs": ("a.zip", b"PK", "application/zip")}})
        upload.start()
        assert started.wait(20)
        assert client.get("/").status_code == 200  # Served while the archive is prepared.
        answered.set()
        upload.join()
    assert outcome == [True]


def _bomb_png(side: int = 20000) -> bytes:
    """A real PNG of side x side black pixels (1 bit each): 50 KB that decode to 400 MB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    row = bytes(1 + side // 8)  # Filter byte, then the row's bits.
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))


def test_a_decompression_bomb_upload_is_refused_with_a_400(roots, tmp_path):
    bomb = _bomb_png()
    assert len(bomb) < 100_000
    run = _completed_run(tmp_path)
    settings, app = _app(roots)
    response = _browser(app, settings).post(f"/runs/{run}/classify", files={
        "image": ("bomb.png", bomb, "image/png")})
    assert response.status_code == 400
    assert "has too many pixels to decode" in response.json()["detail"]
    uploads = os.path.join(settings.home, "uploads")
    assert not os.path.isdir(uploads) or os.listdir(uploads) == []


@contextmanager
def _server(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join()


def _post_until_answered(port: int, path: str, headers: dict[str, str], chunks) -> tuple[int, int]:
    """Sends a POST body chunk by chunk until the server answers: (status, body bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall((head + "\r\n").encode())
    sent = 0
    answered = bool(select.select([sock], [], [], 2)[0])  # Refused at once?
    for chunk in chunks:
        if answered or select.select([sock], [], [], 0)[0]:
            break
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(chunk)
    sock.settimeout(60)
    reply = sock.recv(4096)
    sock.close()
    return int(reply.split()[1]), sent


def test_a_100_mb_upload_is_refused_while_it_streams(roots, tmp_path):
    run = _completed_run(tmp_path)
    settings, app = _app(roots, max_upload_bytes=1 << 20)
    total, piece = 100 << 20, b"\0" * (64 << 10)
    headers = {"Host": "127.0.0.1", "Authorization": f"Bearer {settings.token}",
               "Content-Type": "multipart/form-data; boundary=b"}
    body = [b'--b\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n']
    body += [piece] * (total // len(piece)) + [b"\r\n--b--\r\n"]
    with _server(app) as port:
        # Its size declared: refused before a byte of it is sent.
        status, sent = _post_until_answered(
            port, f"/runs/{run}/classify", dict(headers, **{"Content-Length": str(total)}), body)
        assert (status, sent) == (413, 0)
        # Sent in chunks, size unknown: refused once past the limit, not at the end.
        chunked = [b"%x\r\n%s\r\n" % (len(c), c) for c in body] + [b"0\r\n\r\n"]
        status, sent = _post_until_answered(
            port, f"/runs/{run}/classify", dict(headers, **{"Transfer-Encoding": "chunked"}),
            chunked)
        assert status == 413 and sent < 16 << 20
    uploads = os.path.join(settings.home, "uploads")
    assert not os.path.isdir(uploads) or os.listdir(uploads) == []


# --- 7: jobs import vispipe's own code -----------------------------------------------

def test_jobs_run_vispipes_own_code_whatever_the_working_directory(tmp_path, monkeypatch):
    # Folders named like vispipe's packages where the UI was started: importing any of
    # them would leave a marker (and break the job).
    shadows = tmp_path / "started-here"
    for package in ("vispipe", "export", "serving"):
        (shadows / package).mkdir(parents=True)
        source = (f"open({str(tmp_path / (package + '.imported'))!r}, 'w').close()\n"
                  "raise ImportError('the wrong code')\n")
        for module in ("__init__.py", "__main__.py"):
            (shadows / package / module).write_text(source)
    monkeypatch.chdir(shadows)
    Registry.open().add("dataset", "listed-by-vispipe", str(tmp_path), {})
    queue = JobQueue(UISettings(home=str(tmp_path / "ui")))
    job_id = queue.submit("List", "registry", ["registry", "--kind", "dataset"])
    job, log = _run_first_job(queue)
    assert job.id == job_id and job.status == "completed", log
    assert "listed-by-vispipe" in log
    assert not list(tmp_path.glob("*.imported"))


# --- 9: the token URL ------------------------------------------------------------------

def test_the_token_is_moved_from_the_url_into_a_cookie(roots):
    settings, app = _app(roots)
    client = TestClient(app, base_url="http://localhost")
    response = client.get(f"/datasets/new?token={settings.token}&x=1", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/datasets/new?x=1"
    assert response.headers["referrer-policy"] == "no-referrer"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"vispipe_token={settings.token};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = client.get(response.headers["location"])
    assert page.status_code == 200 and settings.token not in page.text
    assert "vispipe_session=" in page.headers["set-cookie"]
    assert "HttpOnly" in page.headers["set-cookie"]
    assert "SameSite=strict" in page.headers["set-cookie"]


def test_a_page_opened_from_another_site_reloads_once_to_get_its_cookie(roots):
    # A SameSite=Strict cookie is not sent on a navigation from another site: the 401
    # page reloads itself (now a same-site request, with the cookie) instead of failing.
    settings, app = _app(roots)
    client = TestClient(app, base_url="http://localhost")
    navigation = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    page = client.get("/runs/1", headers=navigation)
    assert page.status_code == 401 and '<meta http-equiv="refresh" content="0">' in page.text
    # Once reloaded from itself and still without a token, it stays a plain 401.
    again = client.get("/runs/1", headers=dict(navigation, **{"Sec-Fetch-Site": "same-origin"}))
    assert again.status_code == 401 and "refresh" not in again.text


def test_the_ui_verb_prints_a_url_with_a_fresh_token(roots):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vispipe", "ui", "--port", str(port),
                             "--data-root", str(roots)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, VISPIPE_UI_TOKEN=""))
    try:
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
        deadline = time.monotonic() + 60
        while not any("http://" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        url = next((line.strip() for line in lines if "http://" in line), "")
        assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/\?token=[0-9a-f]{{48}}", url), lines
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        browser = build_opener(HTTPCookieProcessor())  # Keeps the cookie the URL sets.
        with browser.open(url) as page:
            assert page.status == 200 and page.url == f"http://127.0.0.1:{port}/"
            assert b"Datasets" in page.read()
        with pytest.raises(HTTPError, match="401"):
            build_opener().open(f"http://127.0.0.1:{port}/")
    finally:
        proc.terminate()
        proc.wait(30)
