"""Classic Keras layers against keras.layers where Keras has them, SegNet unpooling, randomness,
data formats and the defects of Keras' adaptive pooling."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import poolkit.keras as PK
import poolkit.ops as P

from keras_helpers import BACKEND, tensor, to_numpy

pytestmark = pytest.mark.default_dtypes


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize(
    "nd,shape,pool,strides",
    [
        (1, (2, 11, 3), 3, 2),
        (2, (2, 9, 7, 3), 3, 2),
        (2, (2, 8, 8, 2), 2, None),
        (2, (1, 7, 9, 2), (2, 3), (1, 2)),
        (3, (1, 5, 6, 7, 2), 2, 2),
    ],
    ids=["1d", "2d-k3s2", "2d-k2", "2d-aniso", "3d"],
)
@pytest.mark.parametrize("kind", ["Max", "Avg"])
def test_drop_in_for_keras_pooling(kind, nd, shape, pool, strides, padding):
    if BACKEND == "torch" and kind == "Avg" and padding == "same" and shape == (1, 7, 9, 2):
        pytest.skip(
            "Keras' torch backend averages 'same' windows with asymmetric padding differently from "
            "TensorFlow (its own reference); ours follows TensorFlow, checked on the TensorFlow backend"
        )
    x = _x(shape)
    ours = getattr(PK, f"{kind}Pool{nd}D")(pool, strides, padding)(tensor(x))
    theirs = getattr(keras.layers, f"{kind.replace('Avg', 'Average')}Pooling{nd}D")(pool, strides, padding)(
        tensor(x)
    )
    np.testing.assert_allclose(to_numpy(ours), to_numpy(theirs), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["Max", "Average"])
def test_global_pooling_matches_keras(kind):
    x = _x((2, 5, 6, 3))
    ours = getattr(PK, f"Global{kind.replace('Average', 'Avg')}Pool2D")()(tensor(x))
    theirs = getattr(keras.layers, f"Global{kind}Pooling2D")()(tensor(x))
    np.testing.assert_allclose(to_numpy(ours), to_numpy(theirs), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["Max", "Average"])
def test_adaptive_matches_keras_where_keras_works(kind):
    x = _x((2, 8, 12, 3))
    ours = getattr(PK, f"Adaptive{kind.replace('Average', 'Avg')}Pool2D")((4, 3))(tensor(x))
    theirs = getattr(keras.layers, f"Adaptive{kind}Pooling2D")((4, 3))(tensor(x))
    np.testing.assert_allclose(to_numpy(ours), to_numpy(theirs), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("out", [1, (5, 7), (6, 3)], ids=["to-1", "upsample-non-square", "larger-than-width"])
@pytest.mark.parametrize("kind", ["Max", "Avg"])
def test_adaptive_layers_are_finite_where_keras_is_not(kind, out):
    """TensorFlow's AdaptiveMaxPooling2D(1) kills the process; JAX's is NaN for outputs >= a non-square input."""
    x = _x((2, 3, 2, 4))
    got = to_numpy(getattr(PK, f"Adaptive{kind}Pool2D")(out)(tensor(x)))
    assert np.isfinite(got).all()
    ref = getattr(P, f"adaptive_{kind.lower()}_pool2d")(x, out, data_format="channels_last")
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_segnet_unpooling_inverts_pooling():
    x = np.abs(_x((2, 8, 10, 3))) + 0.1
    y, idx = PK.MaxPool2D(2, return_indices=True)(tensor(x))
    u = to_numpy(PK.MaxUnpool2D(2)(y, idx))
    # positive maxima back at their positions, zeros elsewhere: pooling again gives the same maxima
    assert (u != 0).sum() == np.prod(y.shape)
    np.testing.assert_array_equal(to_numpy(PK.MaxPool2D(2)(tensor(u))), to_numpy(y))
    np.testing.assert_array_equal(
        u, P.max_unpool2d(to_numpy(y), to_numpy(idx), 2, data_format="channels_last")
    )


def test_segnet_encoder_decoder_trains():
    inp = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(4, 3, padding="same")(inp)
    p, idx = PK.MaxPool2D(2, return_indices=True)(h)
    h = keras.layers.Conv2D(4, 3, padding="same")(p)
    h = PK.MaxUnpool2D(2)(h, idx)
    out = keras.layers.Conv2D(1, 1)(h)
    model = keras.Model(inp, out)
    model.compile("adam", "mse")
    x = _x((8, 8, 8, 2))
    loss = model.fit(x, x[..., :1], epochs=2, batch_size=4, verbose=0).history["loss"]
    assert np.isfinite(loss).all()


def test_fractional_random_in_training_fixed_in_inference():
    x = tensor(_x((2, 12, 12, 3)))
    layer = PK.FractionalMaxPool2D(2, output_size=5, seed=7)
    a, b = (to_numpy(layer(x, training=True)) for _ in range(2))
    assert a.shape == (2, 5, 5, 3) and not np.array_equal(a, b)
    np.testing.assert_array_equal(to_numpy(layer(x)), to_numpy(layer(x)))
    again = PK.FractionalMaxPool2D(2, output_size=5, seed=7)
    np.testing.assert_array_equal(to_numpy(again(x, training=True)), a)


def test_data_format_defaults_to_keras_config():
    assert PK.MaxPool2D(2).data_format == keras.config.image_data_format() == "channels_last"
    keras.config.set_image_data_format("channels_first")
    try:
        layer = PK.AvgPool2D(2)
        assert layer.data_format == "channels_first"
        x = _x((1, 3, 6, 4))
        np.testing.assert_allclose(to_numpy(layer(tensor(x))), P.avg_pool2d(x, 2), rtol=1e-6)
    finally:
        keras.config.set_image_data_format("channels_last")


def test_avg_pool_count_include_pad_follows_the_padding_kind():
    x = _x((1, 5, 5, 1))
    same = to_numpy(PK.AvgPool2D(3, 1, "same")(tensor(x)))  # Keras/TF: padding not counted
    explicit = to_numpy(PK.AvgPool2D(3, 1, 1)(tensor(x)))  # PyTorch: padding counted
    np.testing.assert_allclose(
        same, P.avg_pool2d(x, 3, 1, "same", count_include_pad=False, data_format="channels_last"), rtol=1e-6
    )
    np.testing.assert_allclose(explicit, P.avg_pool2d(x, 3, 1, 1, data_format="channels_last"), rtol=1e-6)
    assert not np.allclose(same[0, 0, 0], explicit[0, 0, 0])


@pytest.mark.parametrize(
    "make,words",
    [
        (lambda: PK.MaxPool2D(0), "pool_size"),
        (lambda: PK.MaxPool2D(3, padding=2), "pool_size // 2"),
        (lambda: PK.AvgPool2D(2, strides=(1, 2, 3)), "strides"),
        (lambda: PK.MaxPool2D(2, dilation_rate=0), "dilation_rate"),
        (lambda: PK.MaxPool2D(2, data_format="NHWC"), "data_format"),
        (lambda: PK.AdaptiveAvgPool2D(0), "output_size"),
        (lambda: PK.FractionalMaxPool2D(2), "output_size"),
        (lambda: PK.MaxPool2D(5)(keras.Input((4, 4, 3))), "pool_size=5"),
        (lambda: PK.MaxPool2D(2)(keras.Input((4, 4))), "4-D"),
        (lambda: PK.MaxPool2D(2)(keras.Input((None, None, 3))), "fixed input size"),
    ],
    ids=[
        "pool-0",
        "padding",
        "strides-length",
        "dilation",
        "data-format",
        "output-0",
        "fractional-size",
        "too-small-input",
        "rank",
        "unknown-size",
    ],
)
def test_errors_at_model_definition_name_keras_arguments(make, words):
    from poolkit.errors import PoolingError

    with pytest.raises(PoolingError, match=words):
        make()


def test_unpool_out_of_range_indices_raise_eagerly():
    from poolkit.errors import PoolingInputError

    x = _x((1, 7, 9, 2))
    y, idx = P.max_pool2d(x, 2, return_indices=True, data_format="channels_last")
    with pytest.raises(PoolingInputError, match="output_size"):
        PK.MaxUnpool2D(2)(tensor(y), tensor(idx))
    u = PK.MaxUnpool2D(2)(tensor(y), tensor(idx), output_size=(7, 9))
    assert tuple(u.shape) == (1, 7, 9, 2)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's own functions")
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_tensorflow_functions_agree(padding):
    import tensorflow as tf

    x = _x((2, 9, 7, 3))
    y, arg = tf.nn.max_pool_with_argmax(x, 3, 2, padding, include_batch_in_index=True)
    ours, idx = PK.MaxPool2D(
        3, 2, padding.lower(), return_indices=True, index_format="tf", include_batch_in_index=True
    )(tensor(x))
    np.testing.assert_array_equal(to_numpy(ours), y.numpy())
    np.testing.assert_array_equal(to_numpy(idx), arg.numpy())
    np.testing.assert_allclose(
        to_numpy(PK.AvgPool2D(3, 2, padding.lower())(tensor(x))),
        tf.nn.avg_pool2d(x, 3, 2, padding).numpy(),
        rtol=1e-6,
        atol=1e-6,
    )
    np.testing.assert_array_equal(
        to_numpy(PK.MaxPool2D(3, 2, padding.lower())(tensor(x))), tf.nn.max_pool2d(x, 3, 2, padding).numpy()
    )


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's own functions")
def test_tensorflow_parity_example_runs():
    import runpy
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "tensorflow_parity.py"
    lines = runpy.run_path(str(example))["main"]()
    assert len(lines) == 2 and all("indices equal" in line for line in lines)
