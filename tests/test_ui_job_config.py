"""Every job the UI starts runs `vispipe VERB --config job.yaml`: the form's typed config.

Each test reads the queued job's command line back with the CLI's own parser
(and `vispipe serve`'s), so what is checked is what the job will run. No job
is started (`start_jobs=False`); `tests/test_ui_jobs.py` runs real ones.
"""

from __future__ import annotations

import io
import os
import re

import pytest
import yaml

from vispipe.cli import build_parser
from vispipe.cli_grammar import resolve
from vispipe.configs import LR_POLICIES, OPTIMIZERS, ModelConfig, TrainConfig
from vispipe.export.options import FORMATS, ExportOptions
from vispipe.registry import Registry
from vispipe.ui.jobs import read_job

from ui_helpers import browser_client, write_run

EVIL = '<img src=x onerror=alert(1)>'


@pytest.fixture
def roots(tmp_path):
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def _only_job():
    (entry,) = Registry.open().list("job")
    return read_job(entry)


def _config_file(job) -> str:
    argv = job.entry.params["argv"]
    assert argv[-2] == "--config"
    assert argv[-1] == os.path.join(job.entry.path, "job.yaml") and os.path.isfile(argv[-1])
    return argv[-1]


def _resolved(job):
    """The job's command line as `vispipe` parses it, and the config it resolves to."""
    _config_file(job)
    args = build_parser().parse_args(job.entry.params["argv"])
    return args, resolve(args)


def _completed(kind: str, path, name: str = "x") -> int:
    registry = Registry.open()
    entry = registry.add(kind, name, str(path), {})
    registry.finish(entry, "completed", {"classes": 2})
    return entry


def _train_form(dataset_id: int, **fields) -> dict:
    return {"name": "m", "dataset": str(dataset_id), "network": "lenet", "epochs": "4",
            "batch_size": "16", "base_lr": "0.05", "policy": "step", "optimizer": "adam",
            "seed": "7", "val_interval": "2", "snapshot_interval": "1", "gamma": "0.5",
            "step_size": "25", "power": "1", "rotation": "10", "flip_horizontal": "on",
            **fields}


def test_the_new_model_form_offers_and_defaults_to_the_config_classes(roots):
    page = browser_client(roots).get("/models/new").text
    policies = re.search(r'<select name="policy".*?</select>', page, re.S).group(0)
    assert re.findall(r"<option[^>]*>(\w+)</option>", policies) == list(LR_POLICIES)
    optimizers = re.search(r'<select name="optimizer">.*?</select>', page, re.S).group(0)
    assert re.findall(r"<option[^>]*>(\w+)</option>", optimizers) == list(OPTIMIZERS)
    defaults = TrainConfig()
    assert f'name="epochs" type="number" min="1" value="{defaults.epochs}"' in page
    assert f'name="batch_size" type="number" min="1" value="{defaults.batch_size}"' in page
    assert f"<option selected>{defaults.optimizer}</option>" in optimizers
    assert f'value="{defaults.lr.base_lr:g}"' in page
    assert not re.search(r"value=\"None\"|>None<", page)  # A field without a default is empty.


def test_a_training_job_runs_train_with_the_forms_config_file(roots, tmp_path):
    client = browser_client(roots)
    dataset = _completed("dataset", tmp_path / "d")
    (tmp_path / "d").mkdir()
    response = client.post("/models/new", data=_train_form(dataset), follow_redirects=False)
    assert response.status_code == 303, response.text
    job = _only_job()
    run_dir = os.path.join(client.settings.folder("runs"), "m")
    # Only operands on the command line; every setting is in job.yaml.
    assert job.entry.params["argv"][:-2] == ["train", "--dataset", str(tmp_path / "d"),
                                             "--run", run_dir, "--name", "m"]
    args, config = _resolved(job)
    assert (args.dataset, args.run) == (str(tmp_path / "d"), run_dir)
    assert config.model.name == "lenet" and config.model.weights == ""
    train = config.train
    assert (train.epochs, train.batch_size, train.optimizer, train.seed) == (4, 16, "adam", 7)
    assert (train.lr.policy, train.lr.base_lr, train.lr.gamma, train.lr.step_size) == (
        "step", 0.05, 0.5, 25.0)
    assert train.val_interval == 2 and train.augment.rotation == 10.0
    assert train.augment.flip_horizontal and not train.augment.flip_vertical
    # Keys the form does not show keep the config class's defaults.
    assert train.momentum == TrainConfig().momentum and train.cache == TrainConfig().cache


def test_a_refused_value_is_named_and_queues_nothing(roots, tmp_path):
    client = browser_client(roots)
    dataset = _completed("dataset", tmp_path / "d")
    (tmp_path / "d").mkdir()
    response = client.post("/models/new", data=_train_form(dataset, optimizer="sgdx",
                                                           val_interval="9"))
    assert response.status_code == 400
    assert "expected one of sgd, adam" in response.text and "got &#39;sgdx&#39;" in response.text
    assert "expected at most the epochs (4), got 9" in response.text
    assert Registry.open().list("job") == []


def test_the_lr_finder_gets_the_forms_network_and_solver(roots, tmp_path):
    client = browser_client(roots)
    dataset = _completed("dataset", tmp_path / "d")
    (tmp_path / "d").mkdir()
    response = client.post("/models/new", data=_train_form(dataset, action="lr-find"),
                           follow_redirects=False)
    assert response.status_code == 303
    job = _only_job()
    args, config = _resolved(job)
    assert job.entry.params["argv"][:3] == ["lr-find", "--dataset", str(tmp_path / "d")]
    assert args.out == job.target and config.lr_find.num_steps == 60
    assert config.train.optimizer == "adam" and config.train.batch_size == 16
    page = client.get(response.headers["location"]).text  # The job page shows both.
    assert f"vispipe lr-find --dataset {tmp_path / 'd'}" in page
    assert "lr_find:\n  start_lr: 1.0e-07\n  end_lr: 10.0\n  num_steps: 60" in page


def test_a_name_a_config_file_would_expand_is_refused(roots, tmp_path):
    from vispipe.config_io import ConfigError
    from vispipe.configs import DatasetConfig
    from vispipe.ui.job_config import config_text

    (roots / "pets" / "cat").mkdir(parents=True)
    response = browser_client(roots).post("/datasets/new", data={
        "name": "${HOME}", "source_kind": "folder", "source": "pets"})
    assert response.status_code == 400 and "expected no" in response.text
    assert Registry.open().list("job") == []
    with pytest.raises(ConfigError, match="environment variable"):
        config_text({"dataset": DatasetConfig(output="/srv/${VISPIPE_SERVE_AUTH_TOKEN}")})


def _run(tmp_path, name="pets", **kwargs) -> tuple[int, str]:
    run_dir = tmp_path / name
    write_run(run_dir, ["cat", "dog"], name=name, **kwargs)
    return _completed("run", run_dir, name), str(run_dir)


def test_evaluate_and_export_jobs_run_with_their_sections(roots, tmp_path):
    client = browser_client(roots)
    run_id, run_dir = _run(tmp_path)
    assert client.post(f"/runs/{run_id}/evaluate", data={"split": "val"},
                       follow_redirects=False).status_code == 303
    job = _only_job()
    args, config = _resolved(job)
    assert job.entry.params["argv"][:3] == ["evaluate", "--run", run_dir]
    assert config.evaluate.splits == ["val"] and job.target == os.path.join(run_dir, "eval-val")
    assert client.post(f"/runs/{run_id}/evaluate", data={"split": "all"}).status_code == 400

    page = client.get(f"/runs/{run_id}").text
    for fmt in FORMATS:  # The export form offers ExportOptions' formats.
        assert f'name="format_{fmt}"' in page
    response = client.post(f"/runs/{run_id}/export", data={
        "format_tflite": "on", "format_tfjs": "on", "verify_limit": "50"}, follow_redirects=False)
    assert response.status_code == 303
    export = read_job(Registry.open().list("job")[0])
    with open(_config_file(export), encoding="utf-8") as f:
        section = yaml.safe_load(f)["export"]
    from vispipe.config_io import from_dict

    options = from_dict(ExportOptions, section, "export")
    assert options.formats == ("tflite", "tfjs") and options.verify_limit == 50
    args = build_parser().parse_args(export.entry.params["argv"])
    assert (args.run, args.out) == (run_dir, export.target)


def test_a_serve_job_runs_serve_with_a_server_config(roots, tmp_path):
    from vispipe.serving.cli import config_from_args

    out = tmp_path / "export"
    (out / "savedmodel").mkdir(parents=True)
    (out / "savedmodel" / "models.config").write_text(
        'model_config_list { config { name: "pets" base_path: "%s" model_platform: "tensorflow" } }'
        % (out / "savedmodel" / "pets"))
    registry = Registry.open()
    export = registry.add("job", "Export", str(tmp_path / "job"), {
        "verb": "export", "argv": [], "target": str(out), "target_kind": "export"})
    registry.finish(export, "completed", {})
    client = browser_client(roots)
    assert client.post(f"/exports/{export}/serve", data={"port": "8777"},
                       follow_redirects=False).status_code == 303
    serve = read_job(Registry.open().list("job")[0])
    assert serve.entry.params["argv"][:-2] == ["serve"]
    with open(_config_file(serve), encoding="utf-8") as f:
        assert "auth_token: null" in f.read()  # The token goes in the environment, not a file.
    config = config_from_args(build_parser().parse_args(serve.entry.params["argv"]))
    assert (config.rest_port, config.grpc_port, config.host) == (8777, None, "127.0.0.1")
    assert config.model_config_file == str(out / "savedmodel" / "models.config")


# --- pretrained weights --------------------------------------------------------------

def test_imagenet_weights_are_offered_only_for_networks_that_have_them(roots, tmp_path):
    from vispipe.models import IMAGENET_NETWORKS
    from vispipe.train.run_info import PretrainedWeights, RunWarning

    client = browser_client(roots)
    page = client.get("/models/new").text
    marked = re.findall(r'id="net-(\w+)"(?:(?!</tr>).)*<td class="imagenet">yes</td>', page)
    assert sorted(marked) == sorted(IMAGENET_NETWORKS)
    dataset = _completed("dataset", tmp_path / "d")
    (tmp_path / "d").mkdir()
    response = client.post("/models/new", data=_train_form(
        dataset, network="resnet18", pretrained="imagenet"))
    assert response.status_code == 400
    assert (f"ImageNet weights are published for {', '.join(IMAGENET_NETWORKS)}; got network "
            "&#39;resnet18&#39;") in response.text
    response = client.post("/models/new", data=_train_form(
        dataset, network="mobilenet_v2", pretrained="imagenet", unfreeze_blocks="3",
        finetune_lr_mult="10"), follow_redirects=False)
    assert response.status_code == 303
    model = _resolved(_only_job())[1].model
    assert (model.weights, model.unfreeze_blocks, model.finetune_lr_mult) == ("imagenet", 3, 10.0)
    assert model.freeze_epochs == ModelConfig().freeze_epochs  # The config class's default.

    run_id, run_dir = _run(tmp_path, weights="imagenet")
    from vispipe.train.run_folder import RunFolder

    RunFolder(run_dir).update_info(
        pretrained=PretrainedWeights("imagenet", "/cache/mobilenet_v2.h5"),
        warnings=[RunWarning(2, "val_accuracy_at_chance", "validation accuracy <b>at chance</b>")])
    page = client.get(f"/runs/{run_id}").text
    assert ("Pretrained: ImageNet (keras.applications) <span class=\"muted\">(loaded "
            "/cache/mobilenet_v2.h5)</span>") in page
    assert "After epoch 2: validation accuracy &lt;b&gt;at chance&lt;/b&gt;" in page


def _keras_file() -> bytes:
    return b"PK\x03\x04" + bytes(60)


def test_a_new_model_starts_from_an_earlier_run_and_its_page_says_so(roots, tmp_path):
    client = browser_client(roots)
    source_id, source_dir = _run(tmp_path, name=EVIL)
    dataset = _completed("dataset", tmp_path / "d")
    (tmp_path / "d").mkdir()
    response = client.post("/models/new", data=_train_form(
        dataset, pretrained="run", weights_run=str(source_id)), follow_redirects=False)
    assert response.status_code == 303, response.text
    assert _resolved(_only_job())[1].model.weights == source_dir
    tuned_id, _ = _run(tmp_path, name="tuned", weights=source_dir)
    page = client.get(f"/runs/{tuned_id}").text
    assert (f'Pretrained: run <a href="/runs/{source_id}">&lt;img src=x onerror=alert(1)&gt;</a>'
            in page)
    assert "Pretrained: none" in client.get(f"/runs/{source_id}").text
    missing = client.post("/models/new", data=_train_form(dataset, name="m2", pretrained="run"))
    assert missing.status_code == 400 and "expected one of the completed runs" in missing.text


def test_uploaded_weights_are_checked_stored_once_and_offered_again(roots, tmp_path):
    client = browser_client(roots, max_upload_bytes=4096)
    dataset = _completed("dataset", tmp_path / "d")
    (tmp_path / "d").mkdir()
    store = client.settings.folder("weights")
    for name, data, why in [("w.h5", _keras_file(), "expected a name ending in"),
                            ("w.weights.h5", _keras_file(), "is not a .weights.h5 file"),
                            ("../w.keras", b"PK\x03\x04" + bytes(5000), "over 4096 bytes")]:
        response = client.post("/models/new", data=_train_form(dataset),
                               files={"weights_upload": (name, data, "application/octet-stream")})
        assert response.status_code in (413, 415) and why in response.json()["detail"], name
    assert os.listdir(store) == [] and Registry.open().list("job") == []

    for name in ("a", "b"):  # The same file twice: stored once.
        response = client.post("/models/new", data=_train_form(dataset, name=name),
                               files={"weights_upload": ("my <w>.keras", _keras_file(), "x")},
                               follow_redirects=False)
        assert response.status_code == 303, response.text
    (folder,) = os.listdir(store)
    stored = os.path.join(store, folder, "my <w>.keras")
    jobs = [read_job(e) for e in Registry.open().list("job")]
    assert [_resolved(j)[1].model.weights for j in jobs] == [stored, stored]
    page = client.get("/models/new").text
    assert f'<option value="{folder}" >my &lt;w&gt;.keras' in page
    response = client.post("/models/new", data=_train_form(
        dataset, name="c", pretrained="file", weights_file=folder), follow_redirects=False)
    assert response.status_code == 303
    tuned_id, _ = _run(tmp_path, name="tuned", weights=stored)
    assert "Pretrained: weights file my &lt;w&gt;.keras" in client.get(f"/runs/{tuned_id}").text


def test_the_run_page_reads_the_run_through_its_run_info(roots, tmp_path):
    from vispipe.train.run_folder import RunFolder

    client = browser_client(roots)
    run_id, run_dir = _run(tmp_path)
    page = client.get(f"/runs/{run_id}").text
    assert "lenet on pets-dataset, 3 epochs" in page
    assert 'max="2" value="2"' in page  # Classify many: top-k up to the run's 2 classes.
    with pytest.warns(DeprecationWarning):
        RunFolder(run_dir).write_info({"version": 1, "name": "old", "status": "completed"})
    page = client.get(f"/runs/{run_id}").text
    assert "run format 1" in page and "vispipe upgrade-run --run" in page
    assert client.post(f"/runs/{run_id}/classify-many", files={
        "inputs": ("x.txt", io.BytesIO(b"a.png"), "text/plain")}).status_code == 409
