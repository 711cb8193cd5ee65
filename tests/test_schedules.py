"""LR policies against their closed forms, the Keras schedule, plots and errors."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from vispipe.configs import LR_POLICIES, LRPolicyConfig
from vispipe.train import lr_at, make_schedule, plot_schedule

TOTAL = 1000  # DIGITS' scale = TOTAL / 100 = 10 iterations per percent.
STEPS = [0, 1, 99, 329, 330, 331, 499, 500, 749, 750, 900, 999]


def reference(cfg: LRPolicyConfig, total: int, s: int) -> float:
    """Caffe's formulas with the parameters DIGITS derives (caffe_train.py)."""
    lr, scale = cfg.base_lr, total / 100.0
    p = cfg.policy
    if p == "fixed":
        return lr
    if p == "step":
        return lr * cfg.gamma ** (s // math.ceil(cfg.step_size * scale))
    if p == "multistep":
        return lr * cfg.gamma ** sum(s >= math.ceil(v * scale) for v in cfg.steps)
    if p == "exp":
        return lr * (cfg.gamma ** (1.0 / scale)) ** s
    if p == "inv":
        return lr * (1 + (cfg.gamma / scale) * s) ** (-cfg.power)
    if p == "poly":
        return lr * (1 - s / total) ** cfg.power
    if p == "sigmoid":
        caffe_gamma = -cfg.gamma / scale
        return lr / (1 + math.exp(-caffe_gamma * (s - math.ceil(cfg.step_size * scale))))
    if p == "cosine":
        return cfg.min_lr + (lr - cfg.min_lr) * (1 + math.cos(math.pi * s / total)) / 2
    if p == "onecycle":
        start, end, pct = lr / cfg.max_lr_factor, lr / 1e4, s / total
        if pct < 0.25:
            return start + (lr - start) * (1 - math.cos(math.pi * pct / 0.25)) / 2
        return end + (lr - end) * (1 + math.cos(math.pi * (pct - 0.25) / 0.75)) / 2
    raise AssertionError(p)


CASES = [
    LRPolicyConfig(policy="fixed", base_lr=0.05),
    LRPolicyConfig(policy="step", base_lr=0.1, gamma=0.5, step_size=33.0),
    LRPolicyConfig(policy="multistep", base_lr=0.1, gamma=0.1, steps=[50.0, 75.0]),
    LRPolicyConfig(policy="exp", base_lr=0.01, gamma=0.95),
    LRPolicyConfig(policy="inv", base_lr=0.01, gamma=0.1, power=0.75),
    LRPolicyConfig(policy="poly", base_lr=0.01, power=2.0),
    LRPolicyConfig(policy="sigmoid", base_lr=0.01, gamma=0.1, step_size=50.0),
    LRPolicyConfig(policy="cosine", base_lr=0.1, min_lr=0.001),
    LRPolicyConfig(policy="onecycle", base_lr=0.1, max_lr_factor=25.0),
]


@pytest.mark.parametrize("cfg", CASES, ids=[c.policy for c in CASES])
def test_policy_matches_closed_form_and_keras_schedule(cfg):
    expected = [reference(cfg, TOTAL, s) for s in STEPS]
    np.testing.assert_allclose(lr_at(cfg, TOTAL, np.array(STEPS)), expected, rtol=1e-12)
    schedule = make_schedule(cfg, TOTAL)
    got = [float(schedule(s)) for s in STEPS]
    # float32: absolute error up to ~1e-7 of base_lr where the LR nears 0.
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6 * cfg.base_lr)


def test_step_and_multistep_drop_at_digits_percentages():
    step = LRPolicyConfig(policy="step", base_lr=1.0, gamma=0.1, step_size=25.0)
    np.testing.assert_allclose(lr_at(step, 200, np.array([49, 50, 99, 100])),
                               [1.0, 0.1, 0.1, 0.01])
    multi = LRPolicyConfig(policy="multistep", base_lr=1.0, gamma=0.5, steps=[10.0, 90.0])
    np.testing.assert_allclose(lr_at(multi, 200, np.array([19, 20, 179, 180])),
                               [1.0, 0.5, 0.5, 0.25])


def test_warmup_ramps_linearly_then_runs_the_next_policy_over_the_rest():
    cfg = LRPolicyConfig(policy="warmup", base_lr=0.2, warmup_percent=10.0,
                         after_warmup="poly", power=1.0)
    # 100 warm-up steps of 1000, then poly over the remaining 900.
    steps = np.array([0, 50, 99, 100, 550, 999])
    expected = [0.0, 0.1, 0.2 * 99 / 100, 0.2, 0.2 * (1 - 450 / 900), 0.2 * (1 - 899 / 900)]
    np.testing.assert_allclose(lr_at(cfg, 1000, steps), expected, rtol=1e-12)
    got = [float(make_schedule(cfg, 1000)(s)) for s in steps]
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-9)


def test_onecycle_peaks_at_base_lr_after_a_quarter():
    cfg = LRPolicyConfig(policy="onecycle", base_lr=0.4, max_lr_factor=10.0)
    lrs = lr_at(cfg, 400, np.arange(400))
    assert int(np.argmax(lrs)) == 100
    assert lrs[0] == pytest.approx(0.04)
    assert lrs[100] == pytest.approx(0.4)
    assert lrs[-1] < 0.4 / 1e3


def test_scale_multiplies_the_whole_schedule():
    cfg = LRPolicyConfig(policy="cosine", base_lr=0.1)
    schedule = make_schedule(cfg, 100, scale=0.1)
    assert float(schedule(30)) == pytest.approx(0.1 * lr_at(cfg, 100, np.array([30]))[0], rel=1e-5)


def test_schedule_survives_keras_serialization():
    cfg = LRPolicyConfig(policy="sigmoid", base_lr=0.03, gamma=0.2, step_size=40.0)
    schedule = make_schedule(cfg, 500, scale=0.5)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert restored.get_config() == schedule.get_config()
    assert float(restored(321)) == pytest.approx(float(schedule(321)))


def test_plot_schedule_writes_a_png(tmp_path):
    path = plot_schedule(LRPolicyConfig(policy="step"), 300, str(tmp_path / "plots" / "lr.png"),
                         steps_per_epoch=30)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("cfg, message", [
    (LRPolicyConfig(policy="triangle"),
     "lr.policy: unknown policy 'triangle'; expected one of fixed, step"),
    (LRPolicyConfig(base_lr=0.0), r"lr.base_lr: expected a number > 0, got 0.0"),
    (LRPolicyConfig(policy="poly", power=-1.0), r"lr.power: poly needs power >= 0, got -1.0"),
    (LRPolicyConfig(policy="step", step_size=0.0), "lr.step_size: step needs a step size > 0"),
    (LRPolicyConfig(policy="multistep", steps=[75.0, 50.0]),
     "lr.steps: multistep needs increasing"),
    (LRPolicyConfig(policy="exp", gamma=0.0), "lr.gamma: exp needs gamma > 0"),
    (LRPolicyConfig(policy="cosine", min_lr=0.5), "lr.min_lr: cosine needs 0 <= min_lr < base_lr"),
    (LRPolicyConfig(policy="onecycle", max_lr_factor=0.5), "lr.max_lr_factor"),
    (LRPolicyConfig(policy="warmup", warmup_percent=0.0), "lr.warmup_percent"),
    (LRPolicyConfig(policy="warmup", warmup_percent=10.0, after_warmup="warmup"),
     "lr.after_warmup: expected one of fixed"),
])
def test_invalid_parameters_name_the_field(cfg, message):
    with pytest.raises(ValueError, match=message):
        make_schedule(cfg, 100)


def test_every_configured_policy_is_implemented():
    for policy in LR_POLICIES:
        cfg = LRPolicyConfig(policy=policy, warmup_percent=5.0, gamma=0.9, min_lr=0.0)
        lrs = lr_at(cfg, 100, np.arange(100))
        assert np.all(np.isfinite(lrs)) and np.all(lrs >= 0), policy
