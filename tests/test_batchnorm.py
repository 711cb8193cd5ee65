"""BatchNorm statistics that match the weights, and the warning when they do not."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from vispipe.models.batchnorm import (
    batchnorm_layers,
    recompute_statistics,
    set_momentum,
    suited_momentum,
)
from vispipe.train.callbacks import ChanceAccuracyGuard


def bn_model() -> keras.Model:
    inputs = keras.Input((4,))
    x = keras.layers.BatchNormalization(momentum=0.999, name="bn")(inputs)
    x = keras.layers.Dense(3, name="classifier")(x)
    return keras.Model(inputs, x)


def test_suited_momentum_forgets_an_epoch_start_within_the_epoch():
    for steps in (10, 50, 400):
        momentum = suited_momentum(steps)
        assert momentum ** steps == pytest.approx(np.exp(-5), rel=1e-6)
    assert suited_momentum(5000) == 0.99  # Capped at Keras' default.
    assert 0.9 < suited_momentum(50) < 0.91


def test_set_momentum_lowers_only_trainable_layers_above_it():
    inputs = keras.Input((4,))
    x = keras.layers.BatchNormalization(momentum=0.999, name="bn")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.999, name="frozen_bn")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="classifier")(x))
    model.get_layer("frozen_bn").trainable = False
    assert set_momentum(model, 0.9) == 1
    assert model.get_layer("bn").momentum == 0.9
    assert model.get_layer("frozen_bn").momentum == 0.999
    assert set_momentum(model, 0.95) == 0  # 0.9 is already lower.
    assert batchnorm_layers(model) == [model.get_layer("bn")]
    assert len(batchnorm_layers(model, trainable_only=False)) == 2


def test_recompute_statistics_averages_training_batches():
    model = bn_model()
    rng = np.random.default_rng(0)
    batches = [rng.normal([1, 2, 3, 4], [1, 2, 3, 4], (64, 4)).astype("float32")
               for _ in range(8)]
    assert recompute_statistics(model, batches, max_batches=6) == 6
    bn = model.get_layer("bn")
    used = np.stack(batches[:6])
    np.testing.assert_allclose(bn.moving_mean.numpy(), used.mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), used.var(axis=1).mean(axis=0),
                               rtol=1e-4)
    assert bn.momentum == 0.999  # Restored.


def test_recompute_statistics_leaves_frozen_layers_alone():
    model = bn_model()
    model.get_layer("bn").trainable = False
    assert recompute_statistics(model, [np.ones((2, 4), "float32")], 4) == 0
    np.testing.assert_array_equal(model.get_layer("bn").moving_mean.numpy(), np.zeros(4))


def _epochs(guard, records):
    for epoch, (accuracy, val_accuracy) in enumerate(records):
        guard.on_epoch_end(epoch, {"accuracy": accuracy, "val_accuracy": val_accuracy})


def test_chance_guard_warns_once_naming_the_cause(capsys):
    warnings = []
    guard = ChanceAccuracyGuard(0.2, "BatchNorm statistics.", warnings.append)
    _epochs(guard, [(0.33, 0.2), (0.46, 0.2), (0.6, 0.2), (0.71, 0.2)])
    assert len(warnings) == 1 and warnings[0].epoch == 2
    assert warnings[0].kind == "val_accuracy_at_chance"
    assert "Likely cause: BatchNorm statistics." in warnings[0].message
    assert "WARNING: Validation accuracy has stayed at chance" in capsys.readouterr().out


@pytest.mark.parametrize("records", [
    [(0.3, 0.2), (0.32, 0.2), (0.33, 0.2)],   # Not learning either: no verdict.
    [(0.3, 0.2), (0.5, 0.4), (0.7, 0.2)],     # Not at chance twice in a row.
    [(0.3, 0.3), (0.5, 0.45), (0.7, 0.6)],    # Learning and generalising.
])
def test_chance_guard_stays_quiet_otherwise(records):
    warnings = []
    _epochs(ChanceAccuracyGuard(0.2, "x", warnings.append), records)
    assert warnings == []
