"""Classic Keras functionals on the shared named cases: forward, indices and gradients equal to NumPy.

Max-type gradients go to PyTorch's first winner on every backend (the named
``ties`` cases would split them with ``keras.ops.maximum`` on JAX and torch).
"""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

import poolkit.keras.functional as KF
import poolkit.ops as P
from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops.fractional import _fixed_samples

from cases import ADAPTIVE_CASES, ALL_MAX_CASES, WINDOW_CASES, Case, select
from keras_helpers import X64, tensor, to_numpy, value_and_grads

pytestmark = pytest.mark.skipif(not X64, reason="exact float64 comparisons")
EXACT = dict(rtol=1e-12, atol=1e-14)
CLOSE = dict(rtol=1e-10, atol=1e-12)


def _layout(x: np.ndarray, layout: str) -> np.ndarray:
    return np.moveaxis(x, 1, -1).copy() if layout == "channels_last" else x


def _check(fn_np, fn_k, x, rng, tol=CLOSE, indices=False):
    """Forward (and indices) and the gradient of the first output, Keras against NumPy."""
    out, pullback = fn_np(x)
    y = out[0] if indices else out
    g = rng.standard_normal(y.shape)
    got, (gx,) = (
        value_and_grads(fn_k, [x], g if y.size else None) if y.size else (to_numpy(fn_k(tensor(x))), [None])
    )
    if indices:
        np.testing.assert_array_equal(got[1], out[1])
        got = got[0]
    np.testing.assert_allclose(got, y, **tol)
    if y.size and not np.isnan(x).any():
        np.testing.assert_allclose(gx, pullback(g)["x"], **tol)


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize("c", ALL_MAX_CASES)
def test_max_pool_named_cases(c: Case, layout, rng):
    x = _layout(c.input(rng), layout)
    kw = c.window() | dict(dilation=c.dilation, data_format=layout)
    name = f"max_pool{c.nd}d"
    _check(
        lambda a: P.vjp(name, a, return_indices=True, **kw),
        lambda t: getattr(KF, name)(t, return_indices=True, **kw),
        x,
        rng,
        EXACT,
        indices=True,
    )


@pytest.mark.parametrize("include", [True, False])
@pytest.mark.parametrize("c", WINDOW_CASES)
def test_avg_pool_named_cases(c: Case, include, rng):
    x = c.input(rng)
    kw = c.window() | dict(count_include_pad=include, data_format="channels_first")
    name = f"avg_pool{c.nd}d"
    _check(lambda a: P.vjp(name, a, **kw), lambda t: getattr(KF, name)(t, **kw), x, rng)


@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_size=3, stride=2, padding="same", count_include_pad=False),
        dict(kernel_size=(2, 3), stride=2, padding=((0, 1), (1, 1))),
        dict(kernel_size=3, stride=2, padding=((1, 0), (0, 1)), ceil_mode=True),
        dict(kernel_size=3, stride=1, padding=1, dilation=2),
        dict(kernel_size=3, stride=2, padding=1, divisor_override=4),
    ],
    ids=["same", "pairs", "pairs-ceil", "dilated", "divisor-override"],
)
@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_avg_pool_extended_settings(kw, layout, rng):
    x = _layout(rng.standard_normal((2, 3, 9, 8)), layout)
    kw = dict(kw, data_format=layout)
    _check(lambda a: P.vjp("avg_pool2d", a, **kw), lambda t: KF.avg_pool2d(t, **kw), x, rng)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, float("inf")])
@pytest.mark.parametrize(
    "c", select(WINDOW_CASES, exclude=("2d-empty-batch",), where=lambda c: c.padding == 0), ids=str
)
def test_lp_pool_named_cases(c: Case, p, rng):
    x = c.input(rng)
    if c.kind == "ties":
        x = x + rng.uniform(0.1, 0.2, x.shape)  # |x| ties (and 0) make the inf-norm gradient a choice
    kw = dict(kernel_size=c.kernel_size, stride=c.stride, ceil_mode=c.ceil_mode, data_format="channels_first")
    name = f"lp_pool{c.nd}d"
    _check(lambda a: P.vjp(name, a, p, **kw), lambda t: getattr(KF, name)(t, p, **kw), x, rng)


def test_lp_pool_negative_inputs_and_zero_windows_are_finite(rng):
    x = -np.abs(rng.standard_normal((1, 2, 6, 6)))
    x[..., :2, :2] = 0.0
    _check(
        lambda a: P.vjp("lp_pool2d", a, 3.0, 2, data_format="channels_first"),
        lambda t: KF.lp_pool2d(t, 3.0, 2, data_format="channels_first"),
        x,
        rng,
    )


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape,out", ADAPTIVE_CASES)
def test_adaptive_named_cases(shape, out, kind, layout, rng):
    x = _layout(rng.standard_normal(shape), layout)
    nd = len(shape) - 2
    name = f"adaptive_{kind}_pool{nd}d"
    extra = dict(return_indices=True) if kind == "max" else {}
    _check(
        lambda a: P.vjp(name, a, out, data_format=layout, **extra),
        lambda t: getattr(KF, name)(t, out, data_format=layout, **extra),
        x,
        rng,
        EXACT if kind == "max" else CLOSE,
        indices=kind == "max",
    )


@pytest.mark.parametrize(
    "shape,out",
    [((1, 3, 5, 7), 1), ((2, 2, 3, 5), (5, 7)), ((1, 2, 2, 3), (4, 9)), ((2, 3, 5), 8)],
    ids=["global", "upsample-non-square", "upsample-exact-multiple", "1d-upsample"],
)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_adaptive_has_neither_keras_crash_nor_nan(shape, out, kind, rng):
    """Keras' own AdaptiveMaxPooling2D(1) kills TensorFlow (SIGFPE); its JAX version is NaN when upsampling."""
    x = rng.standard_normal(shape)
    nd = len(shape) - 2
    y = to_numpy(getattr(KF, f"adaptive_{kind}_pool{nd}d")(tensor(x), out, data_format="channels_first"))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, getattr(P, f"adaptive_{kind}_pool{nd}d")(x, out), **CLOSE)


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 5, 6), (1, 2, 3, 4, 5)], ids=["1d", "2d", "3d"])
def test_global(shape, kind, keepdims, rng):
    x = rng.integers(-2, 3, shape).astype(np.float64)  # ties: the gradient goes to the first maximum
    name = f"global_{kind}_pool"
    _check(
        lambda a: P.vjp(name, a, keepdims),
        lambda t: getattr(KF, name)(t, keepdims, data_format="channels_first"),
        x,
        rng,
    )


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize(
    "shape,k,kw",
    [
        ((2, 3, 9, 11), 2, dict(output_ratio=0.5)),
        ((2, 3, 9, 11), 3, dict(output_size=(4, 5))),
        ((2, 2, 10), 2, dict(output_size=6)),
        ((1, 2, 6, 7, 8), 2, dict(output_size=(3, 4, 5))),
        ((2, 2, 6, 6), 2, dict(output_size=(5, 1))),
    ],
    ids=["2d-ratio", "2d-k3", "1d", "3d", "2d-single-output"],
)
def test_fractional_with_given_samples(shape, k, kw, layout, rng):
    x = rng.integers(-3, 4, shape).astype(np.float64)  # ties
    samples = _fixed_samples(x)
    nd = len(shape) - 2
    x = _layout(x, layout)
    name = f"fractional_max_pool{nd}d"
    args = dict(kw, return_indices=True, samples=samples, data_format=layout)
    _check(
        lambda a: P.vjp(name, a, k, **args),
        lambda t: getattr(KF, name)(t, k, **dict(args, samples=tensor(samples))),
        x,
        rng,
        EXACT,
        indices=True,
    )


def test_fractional_draws_from_its_seed(rng):
    x = tensor(rng.standard_normal((2, 3, 12, 12)))
    a = to_numpy(KF.fractional_max_pool2d(x, 2, output_size=5, seed=3, data_format="channels_first"))
    b = to_numpy(KF.fractional_max_pool2d(x, 2, output_size=5, seed=3, data_format="channels_first"))
    c = to_numpy(KF.fractional_max_pool2d(x, 2, output_size=5, seed=4, data_format="channels_first"))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize(
    "shape,k,s,p,out",
    [
        ((2, 3, 8, 8), 2, None, 0, None),
        ((2, 3, 7, 9), 2, None, 0, (7, 9)),
        ((1, 2, 9, 9), 3, 2, 1, None),
        ((2, 2, 11), 3, 2, 0, None),
        ((1, 2, 4, 6, 6), 2, None, 0, None),
        ((1, 2, 6, 6), 3, 1, 1, None),
    ],
    ids=["2d", "2d-odd-output-size", "2d-k3s2p1", "1d", "3d", "overlapping-repeated-indices"],
)
def test_max_unpool_inverts_max_pool(shape, k, s, p, out, layout, rng):
    x = _layout(rng.integers(-2, 3, shape).astype(np.float64), layout)
    nd = len(shape) - 2
    kw = dict(kernel_size=k, stride=s, padding=p, data_format=layout)
    y, idx = getattr(P, f"max_pool{nd}d")(x, return_indices=True, **kw)
    name = f"max_unpool{nd}d"
    ref, pullback = P.vjp(name, y, idx, output_size=out, **kw)
    g = rng.standard_normal(ref.shape)
    got, (gy,) = value_and_grads(lambda t: getattr(KF, name)(t, tensor(idx), output_size=out, **kw), [y], g)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_allclose(gy, pullback(g)["x"], **EXACT)


def test_max_unpool_reads_tensorflow_indices(rng):
    x = rng.standard_normal((2, 6, 8, 3))
    y, idx = P.max_pool2d(x, 2, return_indices=True, index_format="tf", data_format="channels_last")
    ref = P.max_unpool2d(y, idx, 2, index_format="tf", data_format="channels_last")
    got = KF.max_unpool2d(tensor(y), tensor(idx), 2, index_format="tf", data_format="channels_last")
    np.testing.assert_array_equal(to_numpy(got), ref)


@pytest.mark.parametrize("include_batch", [False, True])
def test_max_pool_tensorflow_index_format(include_batch, rng):
    x = rng.standard_normal((2, 7, 9, 3))
    kw = dict(kernel_size=3, stride=2, padding="same", data_format="channels_last", index_format="tf")
    ref = P.max_pool2d(x, return_indices=True, include_batch_in_index=include_batch, **kw)
    got = KF.max_pool2d(tensor(x), return_indices=True, include_batch_in_index=include_batch, **kw)
    np.testing.assert_array_equal(to_numpy(got[1]), ref[1])


@pytest.mark.parametrize(
    "call,err,words",
    [
        (lambda x: KF.max_pool2d(x, 0, data_format="channels_first"), PoolingConfigError, "kernel_size"),
        (
            lambda x: KF.max_pool2d(x, 2, padding=5, data_format="channels_first"),
            PoolingConfigError,
            "padding",
        ),
        (lambda x: KF.avg_pool2d(x, 9, data_format="channels_first"), PoolingInputError, "does not fit"),
        (lambda x: KF.max_pool3d(x, 2, data_format="channels_first"), PoolingInputError, "3"),
        (lambda x: KF.max_pool2d(x, 2, data_format="NCHW"), PoolingConfigError, "data_format"),
        (lambda x: KF.lp_pool2d(x, -1.0, 2, data_format="channels_first"), PoolingConfigError, "norm_type"),
        (
            lambda x: KF.adaptive_avg_pool2d(x, 0, data_format="channels_first"),
            PoolingConfigError,
            "output_size",
        ),
        (
            lambda x: KF.max_pool2d(x, 2, include_batch_in_index=True, return_indices=True),
            PoolingConfigError,
            "index_format",
        ),
    ],
    ids=[
        "kernel-0",
        "padding-too-large",
        "window-too-large",
        "rank",
        "data-format",
        "norm-type",
        "output-0",
        "batch-index",
    ],
)
def test_errors_name_the_argument(call, err, words, rng):
    x = tensor(rng.standard_normal((1, 2, 6, 6)))
    with pytest.raises(err, match=words):
        call(x)


def test_integer_input_is_rejected_with_the_fix(rng):
    with pytest.raises(PoolingInputError, match="astype"):
        KF.max_pool2d(ops.convert_to_tensor(np.ones((1, 2, 4, 4), np.int32)), 2, data_format="channels_first")
