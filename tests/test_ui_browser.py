"""The web UI in headless Chromium: dataset -> LeNet with a live chart -> classify -> TF.js.

Also: dataset sample images, the custom network's layer graph and table, classify many
(an archive upload, its results page), the home page at phone width, and a page of
another origin that posts to the UI while the user is logged in to it.

The browser opens the UI as a user does, at the URL with the token that `vispipe ui`
prints; the pages run under their Content-Security-Policy (no inline script).

Screenshots (1280x800 and phone width) go to `test-artifacts/ui/` (or
`$VISPIPE_TEST_ARTIFACTS/ui`).
"""

from __future__ import annotations

import html
import http.server
import json
import os
import threading
import zipfile

import pytest

from browser_ui import (
    ARTIFACTS,
    NO_CHROMIUM,
    chromium_page,
    running_ui,
    shot,
    wait_until,
)
from ports import free_port
from vispipe.ui import UISettings
from vispipe.ui.pages_runs import export_available

pytestmark = [pytest.mark.slow, NO_CHROMIUM]


@pytest.fixture
def server(mnist_small):
    with running_ui(UISettings(data_roots=[mnist_small], max_jobs=1)) as ui:
        yield ui


@pytest.fixture
def page():
    with chromium_page(timeout_ms=240_000) as page:
        yield page


def _digit_archive(mnist_small: str, tmp_path) -> str:
    """A zip of 2 test digits per class, in class sub-folders under one top folder."""
    path = os.path.join(tmp_path, "digits.zip")
    with zipfile.ZipFile(path, "w") as archive:
        for digit in range(10):
            folder = os.path.join(mnist_small, "test", str(digit))
            for name in sorted(os.listdir(folder))[:2]:
                archive.write(os.path.join(folder, name), f"digits/{digit}/{name}")
    return path


def test_dataset_train_classify_in_the_browser(server, page, mnist_small, tmp_path):
    page.goto(server.login_url)
    assert page.url == server.url + "/"  # The token went into a cookie, out of the address bar.
    page.goto(server.url + "/datasets/new")
    shot(page, "01-new-dataset")
    page.fill("#name", "digits")
    page.fill("#source", "train")
    page.click("#create")
    page.wait_for_selector("#class-counts")
    assert page.locator("#class-counts tbody tr:not(.total):not(.imbalance)").count() == 10
    wait_until(page, "[...document.querySelectorAll('img.sample')].every("
                           "(i) => i.complete && i.naturalWidth === 28)")
    assert page.locator("img.sample").count() == 40
    shot(page, "02-dataset")

    page.click("text=Train a model on it")
    page.check("#net-custom")
    page.fill("#custom-code", "import keras\n\ndef build(input_shape, num_classes):\n"
              "    inputs = keras.Input(input_shape)\n"
              "    x = keras.layers.Conv2D(8, 5, activation='relu')(inputs)\n"
              "    s = keras.layers.Conv2D(8, 5, name='<img src=x onerror=alert(1)>')(inputs)\n"
              "    x = keras.layers.Add(name='merge')([x, s])\n"
              "    x = keras.layers.Flatten()(keras.layers.MaxPooling2D()(x))\n"
              "    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))\n")
    page.click("#visualize-network")
    page.wait_for_selector("#network-layers", timeout=120_000)
    params = 2 * (5 * 5 * 8 + 8) + (12 * 12 * 8 * 10 + 10)  # 2 convs + dense
    assert page.get_attribute("#network-preview", "data-params") == str(params)
    assert "(None, 24, 24, 8)" in page.inner_text("#network-layers")
    # The layer graph: a box per layer, the two branches' arrows meeting at the Add,
    # the user's layer name shown as text, not markup.
    graph = page.locator("#network-graph svg")
    assert graph.locator("g.layer").count() == page.locator("#network-layers tbody tr").count()
    assert graph.locator("path.edge[data-to=merge]").count() == 2
    assert page.locator("#network-graph img").count() == 0
    assert "<img src=x onerror=alert(1)>" in graph.locator("g.layer text").all_text_contents()
    box = graph.bounding_box()
    assert box["width"] > 300 and box["height"] > 300  # Drawn at its natural size.
    page.locator("#network-preview").screenshot(path=os.path.join(ARTIFACTS, "03a-network.png"))
    page.check("#net-lenet")
    page.fill("input[name=epochs]", "2")
    page.fill("input[name=batch_size]", "16")
    page.fill("input[name=steps_per_epoch]", "3")
    # Filled last: Chromium reveals the field typed in last, and the name field sits
    # beside "Create", so that reveal cannot scroll the button away mid-click.
    page.fill("#name", "lenet <browser>")
    page.wait_for_selector("#lr-preview[data-points]")
    shot(page, "03-new-model")
    with page.expect_navigation(url="**/jobs/*", timeout=30_000):
        page.click("#train")
    page.wait_for_selector("#chart-loss")
    # The chart gets its first epoch while the job still runs.
    wait_until(page, "document.getElementById('chart-loss').dataset.points >= 1")
    shot(page, "04-training")
    page.wait_for_selector("#final-val-acc")  # The page reloads when the run completes.
    assert "lenet &lt;browser&gt;" in page.content()
    assert page.inner_text("#pretrained") == "Pretrained: none (random initial weights)"
    shot(page, "05-model")

    digit_dir = os.path.join(mnist_small, "test", "3")
    digit = os.path.join(digit_dir, sorted(os.listdir(digit_dir))[0])
    page.set_input_files("#classify-file", digit)
    page.click("#classify-button")
    page.wait_for_selector("#classify-result .bar")
    assert page.locator("#classify-result .bar").count() == 5
    shot(page, "06-classified")

    archive = _digit_archive(mnist_small, tmp_path)
    page.set_input_files("#classify-many-file", archive)
    with page.expect_navigation(url="**/classify/*"):
        page.click("#classify-many-button")
    page.wait_for_selector("#confusion-matrix")  # The page reloads when the job is done.
    wait_until(page, "[...document.querySelectorAll('.thumb img')].every("
                           "(i) => i.complete && i.naturalWidth > 0)")
    assert "of 20 labelled images" in page.inner_text("#accuracy")
    shot(page, "06a-classify-many")
    page.go_back()
    model_page = page.url

    # Pretrained weights: this run's model.keras, uploaded into the store from the form. The
    # form comes back (no name given) with the stored file chosen; no job is started.
    page.goto(server.url + "/models/new")
    assert page.is_checked("#pretrained-none")
    run_dir = os.path.join(os.environ["VISPIPE_HOME"], "ui", "runs", "lenet <browser>")
    page.set_input_files("#weights-upload", os.path.join(run_dir, "model.keras"))
    with page.expect_navigation(url=f"{server.url}/models/new"):
        page.click("#train")
    assert page.is_checked("#pretrained-file")
    assert page.locator("#weights-file option:checked").inner_text().startswith("model.keras")
    page.locator("#pretrained").screenshot(path=os.path.join(ARTIFACTS, "06b-pretrained.png"))
    page.goto(model_page)
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "07-model-phone")
    page.goto(server.url + "/")
    shot(page, "08-home-phone")
    page.set_viewport_size({"width": 1280, "height": 800})
    shot(page, "09-home")

    if not export_available():
        pytest.skip("dataset, training and classify passed; the `vispipe export` verb is not "
                    "registered, so the export and TF.js steps were not run")
    page.go_back()
    page.goto(page.url)
    page.click("#export-button")
    page.wait_for_selector("a[id^=tfjs-link-]", timeout=420_000)  # Over 200 s on a busy 2-core host.
    page.click("a[id^=tfjs-link-]")
    page.wait_for_selector("body[data-model-ready='1']")
    page.set_input_files("#tfjs-file", digit)
    page.wait_for_selector("#server-result[data-top1]")
    page.wait_for_selector("#browser-result[data-top1]")
    page.wait_for_selector("#compare[data-max-diff]")
    shot(page, "10-tfjs")
    assert (page.get_attribute("#browser-result", "data-top1")
            == page.get_attribute("#server-result", "data-top1"))
    # Both sides classify the file's own pixels with float32 weights: the
    # probabilities agree to float rounding, not merely in the top class.
    assert float(page.get_attribute("#compare", "data-max-diff")) < 1e-4
    assert page.locator("#compare tbody tr").count() == 10

    # A drawing: both sides get it at the model's 28x28.
    page.click("#clear")
    box = page.locator("#draw").bounding_box()
    page.mouse.move(box["x"] + 98, box["y"] + 40)
    page.mouse.down()
    page.mouse.move(box["x"] + 98, box["y"] + 160, steps=8)
    page.evaluate("document.getElementById('compare').removeAttribute('data-max-diff')")
    page.mouse.up()
    page.wait_for_selector("#compare[data-max-diff]")
    assert float(page.get_attribute("#compare", "data-max-diff")) < 1e-4
    shot(page, "11-tfjs-drawn")


def test_home_fits_a_phone_screen_and_deletes_after_asking(server, page):
    from vispipe.registry import Registry

    registry = Registry.open()
    for kind, name in (("dataset", "digits-" + "x" * 60), ("run", "LeNetWithAVeryLongName" * 3)):
        folder = os.path.join(os.environ["VISPIPE_HOME"], "ui", f"{kind}s", name)
        os.makedirs(folder)
        entry = registry.add(kind, name, folder, {})
        registry.finish(entry, "completed", {})
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(server.login_url)
    buttons = page.locator("button:has-text('Delete')")
    assert buttons.count() == 2
    for i in range(2):
        box = buttons.nth(i).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "12-home-phone-long-names")
    # Delete asks first (a script's confirm, no inline handler); the form posts its CSRF token.
    page.once("dialog", lambda dialog: dialog.dismiss())
    buttons.nth(0).click()
    page.wait_for_timeout(500)
    assert len(Registry.open().list()) == 2 and page.url == server.url + "/"
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation(url=server.url + "/"):
        buttons.nth(0).click()
    assert page.locator("button:has-text('Delete')").count() == 1
    assert len(Registry.open().list()) == 1


def _serve_page(body: str):
    """An HTTP server of one page on another port: another origin (of the same site)."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def test_a_page_of_another_origin_cannot_post_to_the_ui(server, page, tmp_path):
    from vispipe.registry import Registry

    # What a page on another port would try while the user is logged in to the UI:
    # its browser holds the UI's cookies and sends them (same site, other origin).
    marker = tmp_path / "marker"
    code = (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
            "def build(input_shape, num_classes):\n    raise SystemExit\n")
    evil = _serve_page(f"""<!doctype html><title>a page elsewhere</title>
<form id="forged" method="post" action="{server.url}/models/new">
<input name="name" value="forged"><input name="network" value="custom">
<textarea name="custom_code">{html.escape(code)}</textarea></form>
<script>
const data = new FormData();
data.append("custom_code", {json.dumps(code)});
fetch("{server.url}/models/network-preview", {{method: "POST", mode: "no-cors",
      credentials: "include", body: data}})
  .finally(() => document.getElementById("forged").submit());
</script>""")
    try:
        page.goto(server.login_url)
        sent = []
        page.on("request", lambda r: sent.append((r.method, r.url))
                if r.url.startswith(server.url) else None)
        with page.expect_navigation(url=f"{server.url}/models/new"):
            page.goto(f"http://127.0.0.1:{evil.server_port}/")
        assert "cross-site request refused" in page.inner_text("body")
        shot(page, "13-cross-origin-refused")
    finally:
        evil.shutdown()
    # Both requests went out (the fetch's 403 is also kept from the page by the UI's
    # Cross-Origin-Resource-Policy); the form's 403 is the page shown above.
    assert sent == [("POST", f"{server.url}/models/network-preview"),
                    ("POST", f"{server.url}/models/new")]
    assert not marker.exists()  # Neither request ran the posted code ...
    assert Registry.open().list("job") == []  # ... nor started a job.
    networks = os.path.join(os.environ["VISPIPE_HOME"], "ui", "networks")
    assert not os.path.isdir(networks) or os.listdir(networks) == []
    # The user's own pages still post: the layer graph of the same code, built.
    page.goto(server.url + "/models/new")
    page.check("#net-custom")
    page.fill("#custom-code", "import keras\n\ndef build(input_shape, num_classes):\n"
              "    inputs = keras.Input(input_shape)\n"
              "    return keras.Model(inputs, keras.layers.Dense(num_classes)("
              "keras.layers.Flatten()(inputs)))\n")
    page.click("#visualize-network")
    page.wait_for_selector("#network-layers", timeout=120_000)
