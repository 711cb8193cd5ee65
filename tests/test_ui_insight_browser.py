"""The pages of issue 17 in headless Chromium, under the UI's Content-Security-Policy:
models compared (charts drawn, differing settings highlighted), Grad-CAM over an
uploaded digit, the dataset's imbalance warning, the likely mislabelled images.

Screenshots go to `test-artifacts/ui/` (or `$VISPIPE_TEST_ARTIFACTS/ui`):
`20-compare.png`, `21-gradcam.png`, `22-dataset-imbalance.png`, `23-mislabels.png`.

Cost: about 30 s on 2 idle cores (the two small runs of `ui_insight_runs`, a
2-fold mislabels search of 1 epoch, one browser).
"""

from __future__ import annotations

import os

import pytest

from browser_ui import ARTIFACTS, NO_CHROMIUM, chromium_page, running_ui, shot, wait_until
from ui_insight_runs import make_runs
from vispipe.ui import UISettings

pytestmark = [pytest.mark.slow, NO_CHROMIUM]


@pytest.fixture
def runs(mnist_small, tmp_path, monkeypatch):
    made = make_runs(mnist_small, str(tmp_path))
    monkeypatch.setenv("VISPIPE_HOME", made.home)
    return made


@pytest.fixture
def server(runs, mnist_small):
    with running_ui(UISettings(data_roots=[mnist_small], max_jobs=1)) as ui:
        yield ui


@pytest.fixture
def page():
    with chromium_page(timeout_ms=120_000) as page:
        yield page


def _painted(page, canvas_id: str) -> int:
    """Distinct colours drawn on a canvas (a blank one has 1)."""
    return page.evaluate(
        f"(() => {{ const c = document.getElementById('{canvas_id}');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " const seen = new Set(); for (let i = 0; i < d.length; i += 4)"
        " seen.add(d[i] * 65536 + d[i + 1] * 256 + d[i + 2]); return seen.size; })()")


def test_compare_gradcam_and_imbalance_in_the_browser(server, page, runs):
    page.goto(server.login_url)
    for run_id in runs.run_ids:
        page.check(f"input[name=run][value='{run_id}']")
    with page.expect_navigation(url="**/compare?*"):
        page.click("#compare-button")
    page.wait_for_selector("#compare-settings")
    assert page.locator("#compare-settings tr.differs").count() >= 2
    # Both models' lines and the legend are drawn on each chart.
    for canvas in ("compare-val-acc", "compare-loss", "compare-val-loss"):
        assert _painted(page, canvas) > 20, canvas
    swatch = page.evaluate("getComputedStyle(document.querySelector('.swatch')).backgroundColor")
    assert swatch == "rgb(31, 111, 235)"
    shot(page, "20-compare")
    page.click("#show-all")
    page.wait_for_selector("#compare-settings tr:not(.differs) th")

    page.goto(f"{server.url}/runs/{runs.run_ids[1]}")
    page.set_input_files("#classify-file", runs.digit)
    page.check("#classify-explain")
    page.click("#classify-button")
    page.wait_for_selector("#gradcam-image")
    wait_until(page, "document.getElementById('gradcam-image').naturalWidth === 140")
    assert "Grad-CAM at layer pool2" in page.inner_text("#classify-result")
    page.locator("#classify").screenshot(path=os.path.join(ARTIFACTS, "21-gradcam.png"))

    page.goto(f"{server.url}/datasets/{runs.dataset_id}")
    page.wait_for_selector("#imbalance-note")
    assert page.locator("#imbalance td.warn").count() >= 1
    shot(page, "22-dataset-imbalance")

    from vispipe.evaluate.mislabels import run_label_issues
    from vispipe.registry import Registry

    run_label_issues(Registry.open().get(runs.run_ids[1]).path, folds=2, epochs=1,
                     progress=False)
    page.goto(f"{server.url}/runs/{runs.run_ids[1]}")
    with page.expect_navigation(url="**/mislabels"):
        page.click("#open-mislabels")
    page.wait_for_selector("#mislabels-summary")
    # The rows' images load lazily: those in view have loaded.
    wait_until(page, "[...document.querySelectorAll('#mislabels img')].slice(0, 3).every("
                      "(i) => i.complete && i.naturalWidth === 28)")
    with page.expect_download() as download:
        page.click("#mislabels-csv")
    with open(download.value.path(), encoding="utf-8") as f:
        assert f.readline().startswith("rank,filename,given_label,suggested_label")
    shot(page, "23-mislabels")
