"""The LR range test on a tiny real dataset."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from test_train import write_pattern_dataset
from vispipe.configs import ModelConfig, TrainConfig
from vispipe.train import find_lr
from vispipe.train.lr_finder import suggest_lr


def test_range_test_suggests_a_rate_in_range_and_plots_it(tmp_path):
    dataset = write_pattern_dataset(str(tmp_path / "data"), {"train": 64})
    cfg = TrainConfig(batch_size=16, optimizer="sgd", momentum=0.9, mixed_precision="off")
    result = find_lr(dataset, ModelConfig(name="lenet"), cfg, start_lr=1e-5, end_lr=100.0,
                     num_steps=40, out_dir=str(tmp_path / "out"), progress=False)
    assert math.isfinite(result.suggested_lr) and 1e-5 <= result.suggested_lr <= 100.0
    assert result.suggested_lr in result.lrs
    ratio = 1e7 ** (1 / 39)  # Exponential from 1e-5 to 100 over 40 steps.
    np.testing.assert_allclose(result.lrs[:3], [1e-5, 1e-5 * ratio, 1e-5 * ratio**2], rtol=1e-5)
    assert 3 <= len(result.losses) == len(result.lrs) <= 40
    assert all(math.isfinite(v) for v in result.losses)
    with open(result.plot_path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(tmp_path, "out", "lr_find.json")) as f:
        assert json.load(f)["suggested_lr"] == result.suggested_lr


def test_suggestion_is_the_steepest_descent_point():
    lrs = list(np.logspace(-5, 0, 40))
    losses = [2.0] * 15 + list(np.linspace(2.0, 0.5, 10)) + [0.5] * 15
    losses[17] -= 0.3  # The sharpest drop is around index 17.
    assert suggest_lr(lrs, losses) in (lrs[16], lrs[17])


def test_invalid_range_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="expected 0 < start_lr < end_lr"):
        find_lr(str(tmp_path), ModelConfig(), TrainConfig(), start_lr=1.0, end_lr=0.1)
