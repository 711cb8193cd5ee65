"""Model versions: policies, labels, models.config, polling, hot swap, broken versions, batching."""

from __future__ import annotations

import concurrent.futures
import gc
import os
import threading

import numpy as np
import pytest

from vispipe.serving.batcher import Batcher
from vispipe.serving.config import BatchingConfig
from vispipe.serving.models_config import ModelSpec, VersionPolicy, parse_model_config, read_model_config_file, validate_model_name
from vispipe.serving.errors import ServingError
from vispipe.serving.model_store import ModelStore
from vispipe.serving.testing import write_broken_version, write_test_model

BLANK = np.zeros((1, 4, 4, 1), np.uint8)


def _top(servable) -> int:
    return int(np.argmax(servable.run(None, {"images": BLANK})["probabilities"][0]))


@pytest.fixture(scope="module")
def three_versions(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("models") / "toy")
    for version in (1, 2, 3):
        write_test_model(base, version)
    return base


@pytest.mark.parametrize(
    "policy, expected",
    [
        (VersionPolicy("latest"), [3]),
        (VersionPolicy("latest", 2), [2, 3]),
        (VersionPolicy("all"), [1, 2, 3]),
        (VersionPolicy("specific", versions=(1, 3, 7)), [1, 3]),
    ],
)
def test_version_policy_selects_versions(three_versions, policy, expected):
    store = ModelStore([ModelSpec("toy", three_versions, policy)], warmup=False)
    store.poll()
    assert store.loaded() == {"toy": expected}
    assert store.get("toy").version == expected[-1]
    store.close()


def test_loaded_models_are_kept_out_of_the_garbage_collectors_full_walks(three_versions):
    # Full collections walking TensorFlow's millions of objects were the serving p99.
    gc.unfreeze()
    store = ModelStore([ModelSpec("toy", three_versions, VersionPolicy("latest"))], warmup=False)
    store.poll()
    servable = store.get("toy")
    frozen = gc.get_freeze_count()
    store.close()
    gc.unfreeze()
    assert frozen > 10_000
    assert servable.version == 3


def test_labels_and_specific_versions_route_requests(three_versions):
    store = ModelStore([ModelSpec("toy", three_versions, VersionPolicy("all"), {"stable": 1, "canary": 3})])
    store.poll()
    assert _top(store.get("toy", label="stable")) == 1
    assert _top(store.get("toy", label="canary")) == 0  # 3 % 3
    assert _top(store.get("toy", version=2)) == 2
    with pytest.raises(ServingError) as error:
        store.get("toy", label="beta")
    # TF Serving (server_core.cc GetModelVersionForLabel): an unknown label is INVALID_ARGUMENT.
    assert error.value.code == "INVALID_ARGUMENT"
    assert error.value.message == "Unrecognized servable version label: beta"
    with pytest.raises(ServingError, match="Specific"):
        store.get("toy", version=9)
    with pytest.raises(ServingError, match="Latest"):
        store.get("other")
    store.close()


def test_models_config_text_proto_is_parsed(tmp_path):
    config = tmp_path / "models.config"
    config.write_text(
        """
        model_config_list {
          config { name: "a" base_path: "/models/a" model_platform: "tensorflow" }
          config {
            name: "b" base_path: "rel/b"
            model_version_policy { specific { versions: 1 versions: 2 } }
            version_labels { key: "stable" value: 1 }
            version_labels { key: "canary" value: 2 }
          }
          config { name: "c" base_path: "/c" model_version_policy { latest { num_versions: 2 } } }
          config { name: "d" base_path: "/d" model_version_policy { all {} } }
        }
        """
    )
    a, b, c, d = read_model_config_file(str(config))
    assert (a.name, a.base_path, a.version_policy) == ("a", "/models/a", VersionPolicy("latest", 1))
    assert b.base_path == str(tmp_path / "rel" / "b")
    assert b.version_policy == VersionPolicy("specific", versions=(1, 2))
    assert b.version_labels == {"stable": 1, "canary": 2}
    assert c.version_policy == VersionPolicy("latest", 2)
    assert d.version_policy.kind == "all"


@pytest.mark.parametrize(
    "text, message",
    [
        ("model_config_list { config { name: \"a\" } }", "base_path"),
        ("not a proto {", "text proto"),
        ("model_config_list { config { name: \"../etc\" base_path: \"/x\" } }", "invalid model name"),
        ("model_config_list { config { name: \"a\" base_path: \"/x\" model_platform: \"pytorch\" } }", "tensorflow"),
    ],
)
def test_bad_models_config_is_rejected_with_the_reason(text, message):
    with pytest.raises(ValueError, match=message):
        parse_model_config(text)


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "a..b", "x" * 200])
def test_model_names_that_could_traverse_paths_are_rejected(name):
    with pytest.raises(ValueError, match="invalid model name"):
        validate_model_name(name)


def test_new_version_is_picked_up_and_broken_one_is_not_served(tmp_path):
    base = str(tmp_path / "toy")
    write_test_model(base, 1)
    store = ModelStore([ModelSpec("toy", base)])
    store.poll()
    in_flight = store.get("toy")  # a request that started on version 1
    write_test_model(base, 2)
    store.poll()
    assert store.loaded() == {"toy": [2]}
    assert _top(in_flight) == 1  # finishes on the version it started on
    write_broken_version(base, 3)
    store.poll()
    assert store.loaded() == {"toy": [2]}
    states = {s.version: (s.state, s.error_code) for s in store.status("toy")}
    assert states == {1: ("END", "OK"), 2: ("AVAILABLE", "OK"), 3: ("END", "UNKNOWN")}
    assert store.status("toy", 3)[0].error_message.startswith("DecodeError")
    store.close()


def test_broken_first_version_leaves_model_unready_and_fix_is_loaded(tmp_path):
    base = str(tmp_path / "toy")
    write_broken_version(base, 1)
    store = ModelStore([ModelSpec("toy", base)])
    store.poll()
    assert not store.ready()
    write_test_model(base, 1)  # the fixed files replace the broken ones
    store.poll()
    assert store.ready() and store.loaded() == {"toy": [1]}
    store.close()


def test_polling_thread_serves_a_new_version_without_restart(tmp_path):
    base = str(tmp_path / "toy")
    write_test_model(base, 1)
    store = ModelStore([ModelSpec("toy", base)])
    store.start(poll_interval_s=0.1)
    assert store.wait_ready(60)
    write_test_model(base, 2)
    changed = threading.Event()
    for _ in range(600):
        if store.loaded() == {"toy": [2]}:
            changed.set()
            break
        changed.wait(0.1)
    store.close()
    assert changed.is_set()


def test_batcher_runs_concurrent_requests_as_batches_and_splits_results():
    sizes = []
    batcher = Batcher(lambda inputs: {"double": inputs["x"] * 2}, BatchingConfig(max_batch_size=4, batch_timeout_ms=5000),
                      on_batch=sizes.append)
    futures = [batcher.submit({"x": np.array([[float(i)]])}) for i in range(8)]
    assert [f.result(10)["double"].tolist() for f in futures] == [[[2.0 * i]] for i in range(8)]
    assert sizes == [4, 4]  # full batches run at once, without waiting out the timeout
    batcher.close()


def test_batcher_refuses_when_queue_is_full_and_keeps_shapes_apart():
    release = threading.Event()
    seen = []

    def run(inputs):
        release.wait(10)
        seen.append(inputs["x"].shape)
        return {"y": inputs["x"]}

    batcher = Batcher(run, BatchingConfig(max_batch_size=4, batch_timeout_ms=1, max_queued=3))
    first = batcher.submit({"x": np.zeros((1, 2))})
    queued = [batcher.submit({"x": np.zeros((1, 2))}), batcher.submit({"x": np.zeros((1, 3))})]
    with pytest.raises(ServingError) as error:
        for _ in range(4):
            queued.append(batcher.submit({"x": np.zeros((1, 2))}))
    assert error.value.code == "UNAVAILABLE" and "full" in error.value.message
    release.set()
    concurrent.futures.wait([first, *queued], timeout=10)
    assert all(f.exception() is None for f in [first, *queued])
    assert sorted({s[1] for s in seen}) == [2, 3]
    batcher.close()


def test_zero_padded_version_folders_load_under_their_own_name(tmp_path):
    base = str(tmp_path / "toy")
    write_test_model(base, 7, folder="00000007")
    write_test_model(base, 2, folder="2")
    store = ModelStore([ModelSpec("toy", base, VersionPolicy("all"))])
    store.poll()
    assert store.loaded() == {"toy": [2, 7]}
    assert store.get("toy").path == os.path.join(base, "00000007")
    assert _top(store.get("toy", version=7)) == 1  # 7 % 3
    assert [(s.version, s.state) for s in store.status("toy")] == [(7, "AVAILABLE"), (2, "AVAILABLE")]
    store.close()


def test_reload_follows_tf_servings_label_rules(tmp_path):
    base = str(tmp_path / "toy")
    for version in (1, 2):
        write_test_model(base, version)
    store = ModelStore([ModelSpec("toy", base, VersionPolicy("all"))])
    store.poll()
    store.reload([ModelSpec("toy", base, VersionPolicy("all"), {"stable": 1})])
    assert store.get("toy", label="stable").version == 1
    with pytest.raises(ServingError) as error:  # server_core.cc UpdateModelVersionLabelMap
        store.reload([ModelSpec("toy", base, VersionPolicy("all"), {"stable": 1, "canary": 3})])
    assert error.value.code == "FAILED_PRECONDITION"
    assert error.value.message == "Request to assign label to version 3 of model toy, which is not currently available for inference"
    assert store.resolve_label("toy", "stable") == 1  # the old config stays
    lenient = ModelStore([ModelSpec("toy", base, VersionPolicy("all"), {"stable": 1})], allow_unavailable_labels=True)
    lenient.poll()
    lenient.reload([ModelSpec("toy", base, VersionPolicy("all"), {"stable": 1, "canary": 3})])  # a new label: allowed
    with pytest.raises(ServingError, match="version 3 of model toy"):  # moving an existing one: not
        lenient.reload([ModelSpec("toy", base, VersionPolicy("all"), {"stable": 3})])
    store.close()
    lenient.close()


def test_reload_adds_and_removes_models(tmp_path):
    write_test_model(str(tmp_path / "a"), 1)
    write_test_model(str(tmp_path / "b"), 1)
    store = ModelStore([ModelSpec("a", str(tmp_path / "a"))])
    store.poll()
    store.reload([ModelSpec("b", str(tmp_path / "b"))])
    assert store.loaded() == {"b": [1]} and store.model_names == ["b"]
    assert [(s.version, s.state) for s in store.status("a")] == [(1, "END")]
    with pytest.raises(ServingError, match="Latest"):
        store.get("a")
    with pytest.raises(ServingError) as error:
        store.reload([ModelSpec("b", str(tmp_path / "b")), ModelSpec("c", str(tmp_path / "missing"))])
    assert error.value.code == "UNKNOWN" and "1 model(s) did not become available: {c}" in error.value.message
    store.close()


def test_batcher_runs_requests_alone_when_outputs_have_no_batch_dimension():
    batcher = Batcher(lambda inputs: {"total": inputs["x"].sum()}, BatchingConfig(max_batch_size=4, batch_timeout_ms=500))
    futures = [batcher.submit({"x": np.array([[float(i)]])}) for i in range(3)]
    assert [float(f.result(10)["total"]) for f in futures] == [0.0, 1.0, 2.0]
    batcher.close()


def test_batcher_keeps_one_bad_request_from_failing_the_others():
    def run(inputs):
        if (inputs["x"] < 0).any():
            raise ServingError("INVALID_ARGUMENT", "negative input")
        return {"y": inputs["x"] * 2}

    batcher = Batcher(run, BatchingConfig(max_batch_size=4, batch_timeout_ms=500))
    futures = [batcher.submit({"x": np.array([[v]])}) for v in (1.0, -1.0, 3.0)]
    assert futures[0].result(10)["y"].tolist() == [[2.0]] and futures[2].result(10)["y"].tolist() == [[6.0]]
    with pytest.raises(ServingError, match="negative"):
        futures[1].result(10)
    batcher.close()


def test_batcher_runs_num_batch_threads_batches_at_once():
    both_running = threading.Barrier(2, timeout=10)

    def run(inputs):
        both_running.wait()  # only returns when two batches run at the same time
        return {"y": inputs["x"]}

    batcher = Batcher(run, BatchingConfig(max_batch_size=1, batch_timeout_ms=0, num_batch_threads=2))
    futures = [batcher.submit({"x": np.array([[float(i)]])}) for i in range(2)]
    assert [f.result(15)["y"].tolist() for f in futures] == [[[0.0]], [[1.0]]]
    batcher.close()


def test_a_request_reaching_an_unloaded_version_gets_503_and_starts_no_batcher(three_versions):
    """A request that took a version just before it was unloaded must not start a batcher nobody stops."""
    from vispipe.serving.servable import Servable

    servable = Servable.load("toy", 1, os.path.join(three_versions, "1"), BatchingConfig())
    assert servable.submit(None, {"images": BLANK}).result(timeout=30)["probabilities"].shape == (1, 3)
    servable.close()
    before = threading.active_count()
    with pytest.raises(ServingError) as error:
        servable.submit(None, {"images": BLANK})
    assert error.value.code == "UNAVAILABLE" and "unloading" in error.value.message
    assert threading.active_count() == before and servable.queue_depth() == 0
