"""`vispipe serve`'s command line: TF Serving's flags, vispipe's, YAML config with `--set`, and the
old spellings that still work for one release with a message."""

from __future__ import annotations

import argparse

import pytest

from vispipe.config_io import ConfigError
from vispipe.serving.cli import add_serve_parser, config_from_args, main
from vispipe.serving.config import BatchingConfig, LimitsConfig, ServerConfig, load_server_config
from vispipe.serving.models_config import ModelSpec, VersionPolicy


def _config(*argv: str) -> ServerConfig:
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="verb"))
    return config_from_args(parser.parse_args(["serve", *argv]))


@pytest.fixture
def models_config(tmp_path):
    path = tmp_path / "models.config"
    path.write_text('model_config_list { config { name: "mnist" base_path: "/models/mnist" model_platform: "tensorflow" } }')
    return str(path)


def test_tf_serving_command_line(tmp_path, models_config):
    (tmp_path / "batching.txt").write_text(
        "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 5000 }\nmax_enqueued_batches { value: 10 }\n"
        "num_batch_threads { value: 4 }\nthread_pool_name { value: \"batch_threads\" }\nallowed_batch_sizes: 32\n"
    )
    (tmp_path / "monitoring.txt").write_text("prometheus_config { enable: true }\n")
    config = _config(
        "--port=8500", "--rest_api_port=8501", f"--model_config_file={models_config}",
        "--model_config_file_poll_wait_seconds=60", "--file_system_poll_wait_seconds=1", "--enable_batching",
        f"--batching_parameters_file={tmp_path / 'batching.txt'}", f"--monitoring_config_file={tmp_path / 'monitoring.txt'}",
        "--allow_version_labels_for_unavailable_models", "--rest_api_timeout_in_ms=5000", "--enable_model_warmup=false",
    )
    assert (config.grpc_port, config.rest_port, config.model_config_file) == (8500, 8501, models_config)
    assert (config.model_config_poll_s, config.poll_interval_s) == (60, 1)
    assert config.batching == BatchingConfig(True, 32, 5.0, 320, 4)
    assert config.prometheus_path == "/monitoring/prometheus/metrics"
    assert config.allow_version_labels_for_unavailable_models and not config.warmup
    assert config.limits.request_timeout_s == 5.0
    assert [m.name for m in config.model_specs()] == ["mnist"]


def test_model_name_defaults_as_in_tf_serving_or_vispipe(tmp_path):
    base = str(tmp_path / "lenet")
    assert _config(f"--model_base_path={base}").models[0].name == "default"  # TF Serving's default
    assert _config("--model-base-path", base).models[0].name == "lenet"  # vispipe's: the folder name
    assert _config(f"--model_base_path={base}", "--model_name=digits").models[0].name == "digits"


def test_model_config_file_wins_over_model_name_and_base_path(models_config, capsys):
    # TF Serving's Docker entrypoint always passes --model_name and --model_base_path.
    config = _config("--model_name=model", "--model_base_path=/models/model", f"--model_config_file={models_config}")
    assert config.models == [] and config.model_config_file == models_config
    assert "ignored with --model_config_file" in capsys.readouterr().err


def test_zero_ports_disable_an_api_and_batching_switches(tmp_path):
    config = _config(f"--model_base_path={tmp_path}", "--port=0", "--enable_batching=false")
    assert config.grpc_port is None and config.rest_port == 8501 and not config.batching.enabled
    with pytest.raises(ValueError, match="both disabled"):
        _config(f"--model_base_path={tmp_path}", "--port=0", "--rest_api_port=0")
    (tmp_path / "b.txt").write_text("max_batch_size { value: 4 }")
    with pytest.raises(ValueError, match="without setting --enable_batching"):
        _config(f"--model_base_path={tmp_path}", "--enable_batching=false", f"--batching_parameters_file={tmp_path / 'b.txt'}")


def test_tf_serving_runtime_flags_are_accepted_without_effect(tmp_path, capsys):
    config = _config(f"--model_base_path={tmp_path}", "--tensorflow_session_parallelism=2", "--rest_api_num_threads=8")
    assert config.rest_port == 8501
    assert "--tensorflow_session_parallelism (a TF Serving runtime setting) has no effect" in capsys.readouterr().err


def test_bad_tf_serving_files_name_the_file(tmp_path):
    (tmp_path / "b.txt").write_text("max_batch_size: banana")
    with pytest.raises(ValueError, match="b.txt: not a TF Serving BatchingParameters text proto"):
        _config(f"--model_base_path={tmp_path}", f"--batching_parameters_file={tmp_path / 'b.txt'}")


# -- the old spellings ---------------------------------------------------------------------


def test_old_port_spellings_keep_their_meaning_with_a_message(tmp_path, capsys):
    config = _config("--model-base-path", str(tmp_path), "--port", "8601", "--grpc-port", "8600")
    assert (config.rest_port, config.grpc_port) == (8601, 8600)
    err = capsys.readouterr().err
    assert "--grpc-port is deprecated; use --port" in err and "read the old way, as the REST port" in err
    assert _config("--model-base-path", str(tmp_path), "--grpc-port", "-1").grpc_port is None


def test_port_alone_is_the_grpc_port_and_says_so(tmp_path, capsys):
    config = _config("--model-base-path", str(tmp_path), "--port", "9000")
    assert (config.grpc_port, config.rest_port) == (9000, 8501)
    assert "--port=9000 is the gRPC port, as in TF Serving" in capsys.readouterr().err


def test_other_old_spellings_warn(tmp_path, capsys):
    config = _config("--model-base-path", str(tmp_path), "--poll-interval", "5", "--no-batching", "--no-warmup")
    assert (config.poll_interval_s, config.batching.enabled, config.warmup) == (5.0, False, False)
    err = capsys.readouterr().err
    for old, new in (("--poll-interval", "--file_system_poll_wait_seconds"), ("--no-batching", "--enable_batching=false"),
                     ("--no-warmup", "--enable_model_warmup=false")):
        assert f"{old} is deprecated; use {new}" in err


# -- one config grammar: YAML through vispipe's checker, --set from the config root --------


def test_server_config_loads_from_yaml_with_set_overrides_and_flags(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(
        "models:\n  - name: lenet\n    base_path: /models/lenet\n"
        "    version_policy: {kind: specific, versions: [1, 2]}\n    version_labels: {stable: 1}\n"
        "rest_port: 9501\nbatching: {max_batch_size: 16}\nlimits: {max_image_pixels: 1000000}\n"
    )
    config = _config("--config", str(path), "--set", "batching.max_batch_size=8", "--set", "limits.max_instances=4",
                     "--port=9500")
    assert config.models == [ModelSpec("lenet", "/models/lenet", VersionPolicy("specific", versions=[1, 2]), {"stable": 1})]
    assert (config.rest_port, config.grpc_port) == (9501, 9500)
    assert config.batching.max_batch_size == 8
    assert config.limits == LimitsConfig(max_instances=4, max_image_pixels=1_000_000)


def test_a_pipeline_files_serve_section_is_read_with_set_from_either_root(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("name: photos\nmodel: {name: lenet}\ntrain: {epochs: 2}\n"
                    "serve:\n  models: [{name: photos, base_path: /models/photos}]\n"
                    "  batching: {max_batch_size: 16}\n")
    config = _config("--config", str(path), "--set", "serve.batching.max_batch_size=8",
                     "--set", "limits.max_instances=4")
    assert config.models == [ModelSpec("photos", "/models/photos")]
    assert (config.batching.max_batch_size, config.limits.max_instances) == (8, 4)
    path.write_text("name: photos\nserve: [8501]\n")
    with pytest.raises(ConfigError, match="serve: expected a mapping of server settings, got list"):
        load_server_config(str(path))


@pytest.mark.parametrize("text, message", [
    ("models: [{name: a, base_path: /a}]\nbatching: {max_batch_sise: 3}\n", "batching.max_batch_sise: unknown key"),
    ("models: [{name: a, base_path: /a}]\nrest_port: eighty\n", "rest_port: expected int"),
    ("models: [{name: a, base_path: /a, version_labels: {stable: one}}]\n", "label 'stable': expected a version number"),
    ("models: [{name: ../a, base_path: /a}]\n", "invalid model name"),
    ("rest_port: 1\n", "expected models or a model_config_file"),
])
def test_bad_server_yaml_is_refused_naming_the_key(tmp_path, text, message):
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_server_config(str(path))
    assert str(path) in str(error.value)


def test_python_m_vispipe_serving_without_models_exits_2(capsys):
    assert main(["--port=8500"]) == 2
    assert "expected --model_base_path, --model_config_file or --config FILE" in capsys.readouterr().err
