"""Every Keras layer, generically: equal to the NumPy reference, declared shapes, config and
``.keras`` round trips, and one epoch of training inside a model, on the current backend.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from layer_cases import CASES, LayerCase, _first

import poolkit.keras as PK
import poolkit.ops as P

from keras_helpers import tensor, to_numpy

pytestmark = pytest.mark.default_dtypes
LAYERS = sorted(n for n in PK.__all__ if n != "functional")


def _input(case: LayerCase, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal(case.shape) + np.linspace(0, 1e-2, int(np.prod(case.shape))).reshape(case.shape)
    ).astype(np.float32)


def _numpy(value):
    if isinstance(value, dict):
        return {k: _numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_numpy(v) for v in value)
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, np.ndarray):
        return to_numpy(value)
    return value


def test_every_layer_has_a_case():
    assert sorted(CASES) == LAYERS


@pytest.mark.parametrize("name", LAYERS)
def test_matches_numpy_reference(name):
    case = CASES[name]
    layer = case.build(getattr(PK, name))
    x = _input(case)
    extra = case.extra(x) if case.extra else ()
    inputs = (extra[0], *extra[1:]) if case.extra else (x,)
    got = (
        layer(*[tensor(v) for v in inputs], training=False)
        if _takes_training(layer)
        else layer(*[tensor(v) for v in inputs])
    )
    args, kwargs = layer.call_args(
        *[tensor(v) for v in inputs], **({"training": False} if _takes_training(layer) else {})
    )
    kwargs = {("rng" if k == "seed" else k): v for k, v in kwargs.items()}
    if isinstance(kwargs.get("rng"), keras.random.SeedGenerator):
        kwargs["rng"] = None
    ref = getattr(P, type(layer).function.__name__)(*_numpy(args), **_numpy(kwargs))
    np.testing.assert_allclose(to_numpy(_first(got)), _first(ref), rtol=2e-5, atol=2e-6)
    if isinstance(ref, tuple):
        np.testing.assert_array_equal(to_numpy(got[1]), ref[1])


def _takes_training(layer) -> bool:
    import inspect

    return "training" in inspect.signature(layer.call).parameters


@pytest.mark.parametrize("name", LAYERS)
def test_declared_output_shape(name):
    case = CASES[name]
    layer = case.build(getattr(PK, name))
    x = _input(case)
    if case.extra:
        inputs = case.extra(x)
        declared = layer.compute_output_shape(inputs[0].shape, inputs[1].shape)
        got = layer(*[tensor(v) for v in inputs])
    else:
        declared = layer.compute_output_shape(x.shape)
        got = layer(tensor(x))
    shapes = [tuple(o.shape) for o in got] if isinstance(got, (tuple, list)) else tuple(got.shape)
    declared = [tuple(d) for d in declared] if isinstance(declared[0], tuple) else tuple(declared)
    assert shapes == declared
    # symbolic, with an unknown batch size
    inp = keras.Input(case.shape[1:])
    out = case.graph(case.build(getattr(PK, name)), inp) if case.graph else case.build(getattr(PK, name))(inp)
    assert tuple(_first(out).shape)[1:] == tuple(np.shape(_first(to_numpy(got))))[1:]


@pytest.mark.parametrize("name", LAYERS)
def test_config_round_trip(name):
    case = CASES[name]
    layer = case.build(getattr(PK, name))
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert keras.saving.get_registered_name(type(layer)) == f"poolkit>{name}"
    x = _input(case)
    inputs = case.extra(x) if case.extra else (x,)
    a = layer(*[tensor(v) for v in inputs])
    b = clone(*[tensor(v) for v in inputs])
    np.testing.assert_array_equal(to_numpy(_first(a)), to_numpy(_first(b)))


def _model(name: str, case: LayerCase) -> keras.Model:
    inp = keras.Input(case.shape[1:])
    layer = case.build(getattr(PK, name))
    out = _first(case.graph(layer, inp) if case.graph else layer(inp))
    out = keras.layers.Flatten()(out)
    out = keras.layers.Dense(2, kernel_initializer=keras.initializers.GlorotUniform(seed=1))(out)
    return keras.Model(inp, out)


@pytest.mark.parametrize("name", LAYERS)
def test_model_trains_saves_and_loads(name, tmp_path):
    """One epoch of training on random data, then a .keras round trip that predicts the same."""
    case = CASES[name]
    keras.utils.set_random_seed(0)
    model = _model(name, case)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x = np.concatenate([_input(case, s) for s in range(4)])
    t = np.random.default_rng(1).standard_normal((len(x), 2)).astype(np.float32)
    before = [np.array(to_numpy(w)) for w in model.trainable_weights]
    history = model.fit(x, t, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    after = [np.array(to_numpy(w)) for w in model.trainable_weights]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after)), "a trainable weight did not move"
    path = os.fspath(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        np.asarray(model.predict(x, verbose=0)), np.asarray(loaded.predict(x, verbose=0))
    )
