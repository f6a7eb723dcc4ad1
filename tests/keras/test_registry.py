"""Every operator with a Keras backend: a functional with the NumPy signature, a layer, and the
NumPy reference's forward and gradients on its registry example (float64 where the backend has it).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import poolkit.keras as PK
import poolkit.keras.functional as KF
from poolkit import registry
from poolkit.ops import vjp

from keras_helpers import X64, value_and_grads

OPS = [i.name for i in registry.operators() if "keras" in i.backends]
# Keras' conventions where they differ from the NumPy signature.
RENAMED = {"rng": "seed"}
KERAS_DEFAULTS = {"data_format": None}


def _layer_ops() -> dict[str, list[str]]:
    """Registry operator -> the layer classes calling it."""
    found: dict[str, list[str]] = {}
    for name in PK.__all__:
        cls = getattr(PK, name)
        fn = getattr(cls, "function", None)
        if fn is None:
            continue
        found.setdefault(registry.resolve(fn.__name__)[0].name, []).append(name)
    return found


def test_declared_backends_match_the_keras_functions():
    for info in registry.operators():
        has = hasattr(KF, info.name)
        assert has == ("keras" in info.backends), info.name
        for alias in info.aliases:
            assert hasattr(KF, alias) == has, alias


def test_every_keras_operator_has_a_layer():
    layers = _layer_ops()
    assert sorted(layers) == sorted(OPS)


@pytest.mark.parametrize("name", OPS)
def test_same_signature_as_numpy(name):
    numpy_sig = inspect.signature(registry.get(name).function)
    keras_sig = inspect.signature(getattr(KF, name))
    assert [RENAMED.get(p, p) for p in numpy_sig.parameters] == list(keras_sig.parameters)
    for p in numpy_sig.parameters.values():
        q = keras_sig.parameters[RENAMED.get(p.name, p.name)]
        assert p.kind == q.kind, p.name
        if p.name in KERAS_DEFAULTS:
            assert q.default == KERAS_DEFAULTS[p.name], p.name
        elif isinstance(p.default, (int, float, str, bool, type(None), tuple)):
            assert p.default == q.default, p.name


@pytest.mark.parametrize("name", OPS)
def test_example_matches_numpy_forward_and_gradients(name):
    info = registry.get(name)
    rng = np.random.default_rng(3)
    dtype = np.float64 if X64 else np.float32
    x = (rng.standard_normal((2, 3, 8, 7)) + np.arange(8 * 7).reshape(8, 7) * 1e-3).astype(dtype)  # no ties
    arrays, settings = info.example(x)
    arrays = tuple(_cast(a, dtype) for a in arrays)
    settings = {k: _cast(v, dtype) for k, v in settings.items()}
    if "data_format" in inspect.signature(info.function).parameters:
        settings = {"data_format": "channels_first", **settings}
    out, pullback = vjp(name, *arrays, **settings)
    y = out[0] if isinstance(out, tuple) else out
    g = rng.standard_normal(np.shape(y)).astype(dtype)
    ref = pullback(g)

    # Differentiable inputs: positional arrays (a list of arrays gives one leaf per array) and
    # array-valued settings, in a fixed order.
    names = info.arrays
    leaves: list[tuple[str, int | None]] = []  # (argument, index in its list or None)
    for p, a in enumerate(arrays):
        if p < len(names) and names[p] in info.differentiable:
            leaves += [(names[p], i) for i in range(len(a))] if isinstance(a, list) else [(names[p], None)]
    diff_kw = [k for k, v in settings.items() if k in info.differentiable and isinstance(v, np.ndarray)]
    leaves += [(k, None) for k in diff_kw]
    fixed = {RENAMED.get(k, k): v for k, v in settings.items() if k not in diff_kw}
    position = {n: p for p, n in enumerate(names)}

    def call(*diff):
        args = [list(a) if isinstance(a, list) else a for a in arrays]
        kw = dict(fixed)
        for (label, i), t in zip(leaves, diff):
            if label in diff_kw:
                kw[label] = t
            elif i is None:
                args[position[label]] = t
            else:
                args[position[label]][i] = t
        return getattr(KF, name)(*args, **kw)

    def value(label: str, i: int | None, source: dict) -> np.ndarray:
        v = source[label] if label in source else arrays[position[label]]
        return v if i is None else v[i]

    inputs = [value(label, i, settings) for label, i in leaves]
    got, grads = value_and_grads(call, inputs, g)
    got_y = got[0] if isinstance(got, (tuple, list)) else got
    tol = dict(rtol=1e-10, atol=1e-12) if X64 else dict(rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(got_y, y, **tol)
    assert leaves, f"{name}: the example has no differentiable input"
    for (label, i), gr in zip(leaves, grads):
        np.testing.assert_allclose(gr, value(label, i, ref), err_msg=f"{label}[{i}]", **tol)


def _cast(a, dtype):
    if isinstance(a, list):
        return [_cast(v, dtype) for v in a]
    return a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
