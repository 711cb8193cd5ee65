"""Keras 3 magnitude pruning with tfmot's PolynomialDecay semantics."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from vispipe.export.pruning import (  # noqa: E402
    PolynomialDecay,
    magnitude_mask,
    prune_model,
    weight_sparsity,
)

pytestmark = pytest.mark.slow  # Scheduled first (see conftest).


def test_polynomial_decay_matches_tfmot_formula():
    schedule = PolynomialDecay(0.1, 0.8, begin_step=100, end_step=1100, power=3, frequency=50)
    assert schedule.sparsity(0) == pytest.approx(0.1)
    assert schedule.sparsity(600) == pytest.approx(0.8 + (0.1 - 0.8) * 0.5 ** 3)
    assert schedule.sparsity(5000) == pytest.approx(0.8)
    assert [s for s in range(0, 1300) if schedule.should_prune(s)] == list(range(100, 1101, 50))


def test_polynomial_decay_rejects_bad_settings():
    with pytest.raises(ValueError, match="final_sparsity: expected \\[0, 1\\), got 1.0"):
        PolynomialDecay(0.0, 1.0, 0, 10)
    with pytest.raises(ValueError, match="begin_step=5, end_step=5"):
        PolynomialDecay(0.0, 0.5, 5, 5)


def test_magnitude_mask_keeps_the_largest_weights():
    weights = np.array([[0.1, -0.9], [0.5, -0.2], [0.05, 0.7]], np.float32)
    mask = magnitude_mask(weights, 0.5)
    np.testing.assert_array_equal(mask, [[0, 1], [1, 0], [0, 1]])
    assert magnitude_mask(weights, 0.0).all()


def test_prune_model_reaches_the_target_and_leaves_the_original():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="dense")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (64, 8, 8, 1)).astype(np.uint8)
    labels = rng.integers(0, 3, 64)
    pruned, report = prune_model(model, images, labels, 0.75, epochs=3, batch_size=8,
                                 progress=False)
    assert {layer["name"] for layer in report.layers} == {"conv", "dense"}
    for layer in report.layers:
        assert layer["sparsity"] == pytest.approx(0.75, abs=0.02)
    assert report.steps == 24 and report.schedule["final_sparsity"] == 0.75
    assert weight_sparsity(model)[1] == 0.0  # the original is untouched
    assert weight_sparsity(pruned)[1] == pytest.approx(report.total_sparsity)
    # The rate decays from 1e-3 to 0 over the 24 steps (cosine, the default).
    assert float(keras.ops.convert_to_numpy(pruned.optimizer.learning_rate)) == pytest.approx(
        0.0, abs=1e-9)
    constant, _ = prune_model(model, images[:8], labels[:8], 0.75, decay="constant",
                              progress=False)
    assert float(keras.ops.convert_to_numpy(constant.optimizer.learning_rate)) == pytest.approx(
        1e-3)
    with pytest.raises(ValueError, match="decay: expected one of .*got 'linear'"):
        prune_model(model, images, labels, 0.75, decay="linear")


def test_min_steps_lengthens_a_short_fine_tune_to_a_number_of_steps():
    """A small dataset's epochs are few steps: `min_steps` runs more, ending inside an epoch."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Flatten()(keras.layers.Conv2D(2, 3, name="conv")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="dense")(x))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (32, 6, 6, 1)).astype(np.uint8)
    labels = rng.integers(0, 2, 32)
    pruned, report = prune_model(model, images, labels, 0.5, epochs=1, min_steps=10,
                                 batch_size=8, progress=False)
    # 4 steps an epoch: 10 steps stop in the third epoch, the cosine spanning all of them.
    assert report.steps == 10 and int(pruned.optimizer.iterations) == 10
    assert len(report.history["loss"]) == 3
    assert float(keras.ops.convert_to_numpy(pruned.optimizer.learning_rate)) == pytest.approx(
        0.0, abs=1e-9)
    assert report.total_sparsity == pytest.approx(0.5, abs=0.02)
    _, report = prune_model(model, images, labels, 0.5, epochs=3, min_steps=5, batch_size=8,
                            progress=False)
    assert report.steps == 12  # epochs rule when they are more steps
    with pytest.raises(ValueError, match="min_steps=-1"):
        prune_model(model, images, labels, 0.5, min_steps=-1)


def test_a_one_step_fine_tune_still_reaches_the_target():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(inputs)
    x = keras.layers.SeparableConv2D(4, 3, name="separable")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="dense")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 8, 8, 3)).astype(np.uint8)
    pruned, report = prune_model(model, images, rng.integers(0, 2, 8), 0.5, epochs=1,
                                 progress=False)
    assert report.steps == 1
    assert [layer["name"] for layer in report.layers] == [
        "depthwise", "separable/depthwise_kernel", "separable/pointwise_kernel", "dense"]
    for layer in report.layers:  # 27-weight kernels keep round(13.5) = 14
        assert layer["sparsity"] == pytest.approx(0.5, abs=0.02), layer


def test_pruning_a_depthwise_batchnorm_net_keeps_its_accuracy():
    """After the fine-tune, BatchNorm's statistics are the pruned network's own."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 256)
    # Class 1 is brighter in the red channel and darker in blue: learnable in a few epochs.
    images = rng.normal(128, 40, (256, 12, 12, 3))
    images[..., 0] += np.where(labels, 30, -30)[:, None, None]
    images[..., 2] -= np.where(labels, 30, -30)[:, None, None]
    images = np.clip(images, 0, 255).astype(np.uint8)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="conv")(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn0")(x))
    x = keras.layers.DepthwiseConv2D(3, use_bias=False, name="depthwise")(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    train = images[:192].astype(np.float32)
    model.fit(train, labels[:192], epochs=8, batch_size=32, verbose=0)

    def accuracy(m):
        return float(np.mean(m.predict(images[192:].astype(np.float32), verbose=0).argmax(1)
                             == labels[192:]))

    pruned, _ = prune_model(model, images[:192], labels[:192], 0.5, epochs=2, batch_size=32,
                            progress=False)
    # Six full batches: the recomputed mean is the mean of the pruned conv's outputs.
    conv = keras.Model(pruned.inputs, pruned.get_layer("conv").output).predict(train, verbose=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pruned.get_layer("bn0").moving_mean),
                               conv.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-5)
    assert accuracy(model) > 0.9
    assert accuracy(pruned) >= accuracy(model) - 0.05


def test_statistics_use_full_batches_of_a_list_of_images():
    from vispipe.export import pruning

    inputs = keras.Input((1, 1, 1))
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(inputs))
    images = [np.full((1, 1, 1), value, np.uint8) for value in (10, 20, 30, 40, 250)]
    pruning._recompute_statistics(model, images, batch_size=2, seed=0)
    # Two batches of two; the fifth image (a batch of one, zero variance) is left out.
    order = np.random.default_rng(0).permutation(5)[:4]
    values = np.array([10, 20, 30, 40, 250], np.float64)[order].reshape(2, 2)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), [values.mean()],
                               rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance),
                               [values.var(axis=1).mean()], rtol=1e-5)
