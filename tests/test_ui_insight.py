"""UI pages of issue 17: models compared side by side, Grad-CAM on the classify
form, class imbalance on the dataset page.

Cost: about 15 s on 2 idle cores (a 240-image dataset, two 2-epoch LeNet runs,
shared by the module).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re

import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from ui_insight_runs import make_runs
from vispipe.ui import UISettings, create_app
from vispipe.ui.pages_compare import flatten


@pytest.fixture(scope="module")
def runs(mnist_small, tmp_path_factory):
    return make_runs(mnist_small, str(tmp_path_factory.mktemp("ui-insight")))


@pytest.fixture
def client(runs, monkeypatch, mnist_small):
    monkeypatch.setenv("VISPIPE_HOME", runs.home)
    settings = UISettings(data_roots=[mnist_small])
    client = TestClient(create_app(settings, start_jobs=False), base_url="http://localhost")
    page = client.get(f"/?token={settings.token}")
    token = re.search(r'<meta name="csrf-token" content="(\w+)">', page.text).group(1)
    client.headers.update({"Origin": "http://localhost", "X-CSRF-Token": token})
    return client


def _page_data(html: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="page-data">(.*?)</script>',
                                html, re.S).group(1))


def test_home_lets_the_user_tick_models_to_compare(client, runs):
    html = client.get("/").text
    for run_id in runs.run_ids:
        assert f'name="run" value="{run_id}" form="compare-form"' in html
    assert 'id="compare-form" method="get" action="/compare"' in html


def test_compare_overlays_curves_and_highlights_the_settings_that_differ(client, runs):
    a, b = runs.run_ids
    response = client.get(f"/compare?run={a}&run={b}")
    assert response.status_code == 200
    html = response.text
    differing = re.findall(r'<tr class="differs"><th>([^<]+)</th>', html)
    assert {"train.optimizer", "train.lr.base_lr"} <= set(differing)
    assert "train.batch_size" not in differing and "train.batch_size" not in html
    curves = _page_data(html)["compareRuns"][0]
    assert [c["name"] for c in curves] == ["sgd-run", "adam-run"]
    for run in curves:
        assert [e for e, _ in run["curves"]["val_accuracy"]] == [1, 2]
        assert len(run["curves"]["loss"]) == 2
    everything = client.get(f"/compare?run={a}&run={b}&all=1").text
    assert re.search(r"<tr class=\"\"><th>train.batch_size</th><td>16</td><td>16</td>",
                     everything)


def test_compare_needs_two_known_models(client, runs):
    assert client.get(f"/compare?run={runs.run_ids[0]}").status_code == 400
    assert client.get(f"/compare?run={runs.run_ids[0]}&run=9999").status_code == 404
    assert client.get(f"/compare?run={runs.dataset_id}&run={runs.run_ids[0]}").status_code == 404


def test_flatten_keeps_lists_as_json():
    assert flatten({"train": {"lr": {"steps": [50.0, 75.0]}, "augment": {}}}) == {
        "train.lr.steps": "[50.0, 75.0]", "train.augment": "{}"}


def test_classify_can_show_where_the_model_looks(client, runs):
    with open(runs.digit, "rb") as f:
        data = f.read()
    response = client.post(f"/runs/{runs.run_ids[1]}/classify",
                           files={"image": ("three.png", data, "image/png")},
                           data={"explain": "1"})
    assert response.status_code == 200, response.text
    cam = response.json()["gradcam"]
    assert cam["layer"] == "pool2"
    assert cam["image"].startswith("data:image/png;base64,")
    overlay = Image.open(io.BytesIO(base64.b64decode(cam["image"].split(",", 1)[1])))
    assert overlay.mode == "RGB" and overlay.size == (140, 140)  # 28 px x 5
    plain = client.post(f"/runs/{runs.run_ids[1]}/classify",
                        files={"image": ("three.png", data, "image/png")})
    assert "gradcam" not in plain.json()


def test_model_page_shows_the_grad_cam_of_the_top_losses(client, runs):
    from vispipe.configs import EvaluateConfig
    from vispipe.evaluate import evaluate_splits
    from vispipe.registry import Registry

    run_dir = Registry.open().get(runs.run_ids[1]).path
    evaluate_splits(run_dir, EvaluateConfig(splits=["val"], top_losses=8), progress=False)
    html = client.get(f"/runs/{runs.run_ids[1]}").text
    src = f"/runs/{runs.run_ids[1]}/file/eval-val/top_losses_gradcam.png"
    assert f'src="{src}"' in html and ", balanced " in html
    grid = client.get(src)
    assert grid.status_code == 200 and grid.content.startswith(b"\x89PNG")


def test_new_model_form_offers_class_weights_the_sampler_and_mlflow(client, runs):
    from vispipe.cli import build_parser
    from vispipe.cli_grammar import resolve
    from vispipe.registry import Registry

    page = client.get("/models/new").text
    assert 'name="class_weight"' in page and 'name="balanced_sampler"' in page
    form = {"network": "lenet", "epochs": "1", "batch_size": "8", "base_lr": "0.01",
            "policy": "fixed", "optimizer": "sgd", "seed": "1", "val_interval": "1",
            "snapshot_interval": "1", "name": "weighted", "dataset": str(runs.dataset_id),
            "class_weight": "auto", "balanced_sampler": "on", "mlflow": "on"}
    assert client.post("/models/new", data=form, follow_redirects=False).status_code == 303
    job = next(j for j in Registry.open().list("job") if j.name.endswith("weighted"))
    argv = job.params["argv"]
    train = resolve(build_parser().parse_args(argv)).train  # job.yaml, as `vispipe` reads it
    assert (train.class_weight, train.sampler, train.tracking) == ("auto", "balanced", "mlflow")
    form["class_weight"] = "lots"
    response = client.post("/models/new", data=form, follow_redirects=False)
    assert response.status_code == 400 and "got &#39;lots&#39;" in response.text


def test_dataset_page_reports_the_imbalance(client, runs):
    html = client.get(f"/datasets/{runs.dataset_id}").text
    row = re.search(r'<tr class="imbalance" id="imbalance">(.*?)</tr>', html).group(1)
    ratios = re.findall(r'<td class="(\w*)">([\d.]+)x</td>', row)
    train_class, train_ratio = ratios[0]
    assert train_class == "warn" and float(train_ratio) >= 4
    assert 'id="imbalance-note"' in html and "train.class_weight: auto" in html


def test_a_runs_likely_mislabels_are_written_to_fix_labels_from(runs, monkeypatch):
    import csv
    import os

    from vispipe.evaluate.mislabels import run_label_issues
    from vispipe.registry import Registry

    monkeypatch.setenv("VISPIPE_HOME", runs.home)
    run_dir = Registry.open().get(runs.run_ids[1]).path
    issues = run_label_issues(run_dir, folds=2, epochs=1, progress=False)
    folder = os.path.join(run_dir, "mislabels")
    with open(os.path.join(folder, "label_issues.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(issues.issues) and issues.num_images > 150
    assert all(r["filename"].endswith(".png") and r["new_label"] == "" for r in rows)
    assert len(os.listdir(os.path.join(folder, "images"))) == len(rows)
    assert os.path.isfile(os.path.join(folder, "label_issues.png"))
    with open(os.path.join(folder, "label_issues.json")) as f:
        assert json.load(f)["num_images"] == issues.num_images


def test_mislabels_page_shows_the_images_and_offers_the_csv(client, runs):
    from vispipe.registry import Registry

    run_id = runs.run_ids[1]  # Searched by the test above.
    html = client.get(f"/runs/{run_id}/mislabels").text
    flagged = int(re.search(r"<strong>(\d+)</strong> of \d+ images flagged", html).group(1))
    assert html.count('<img class="sample"') == min(flagged, 200)
    assert client.get(f"/runs/{run_id}/mislabels/image/1.png").headers["content-type"] == \
        "image/png"
    assert client.get(f"/runs/{run_id}/mislabels/image/0.png").status_code == 404
    csv_response = client.get(f"/runs/{run_id}/mislabels.csv")
    assert csv_response.text.startswith("rank,filename,given_label,suggested_label")
    assert client.get(f"/runs/{runs.run_ids[0]}/mislabels.csv").status_code == 404
    assert 'href="/runs/%d/mislabels"' % run_id in client.get(f"/runs/{run_id}").text

    assert client.post(f"/runs/{run_id}/mislabels", data={"folds": "1"}).status_code == 400
    response = client.post(f"/runs/{run_id}/mislabels", data={"folds": "4", "epochs": "2"},
                           follow_redirects=False)
    assert response.status_code == 303
    (job,) = [e for e in Registry.open().list("job") if e.params["verb"] == "mislabels"]
    assert job.params["argv"][:3] == ["mislabels", "--run", Registry.open().get(run_id).path]
    with open(os.path.join(job.path, "job.yaml"), encoding="utf-8") as f:
        assert yaml.safe_load(f) == {"mislabels": {"folds": 4, "epochs": 2, "split": "train"}}
    assert "Search again" in client.get(f"/runs/{run_id}/mislabels").text
