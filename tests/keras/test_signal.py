"""Blur, max-blur, spectral, wavelet and median pooling in Keras: NumPy parity, edge cases, layers.

Gradients are each backend's own autodiff, compared with ``poolkit.ops.vjp``
in float64: the blur's padding adjoint, the spectral crop's Nyquist split,
the wavelet's odd extension and the median's choice of tap (the first in
row-major window order holding it; a NaN window's first NaN).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import poolkit.keras as PK
import poolkit.keras.functional as KF
import poolkit.keras.functional.signal as signal
from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import vjp

from cases import RESEARCH_CASES, Case
from helpers import distinct
from keras_helpers import X64, tensor, to_numpy, value_and_grads

pytestmark = pytest.mark.skipif(not X64, reason="exact float64 comparisons")
CLOSE = dict(rtol=1e-10, atol=1e-12)


def _layout(a: np.ndarray, layout: str) -> np.ndarray:
    return np.moveaxis(a, 1, -1).copy() if layout == "channels_last" else a


def _check(op, x, kw, rng, exact=False):
    """Forward and gradient against ``poolkit.ops.vjp`` (float64); ``exact``: the forward bit for bit."""
    kw = {"data_format": "channels_first", **kw}
    y, pullback = vjp(op, x, **kw)
    g = rng.standard_normal(y.shape)
    got, (gx,) = value_and_grads(lambda t: getattr(KF, op)(t, **kw), [x], g)
    if exact:
        np.testing.assert_array_equal(got, y)
    else:  # NaN and inf where NumPy has them
        np.testing.assert_allclose(got, y, **CLOSE)
    np.testing.assert_allclose(gx, pullback(g)["x"], **CLOSE)


# --------------------------------------------------------------------------- parity with NumPy


def _settings(op: str, case: Case, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    x = case.input(rng)
    stride = case.stride if case.stride is not None else case.kernel_size
    if op.startswith("blur"):
        kw = dict(filt_size=case.kernel_size, stride=stride, padding=case.padding or "antialiased")
        return x, kw | dict(pad_mode=op.split("-")[1])
    if op == "max_blur":  # distinct values: no ties inside a max window
        return distinct(case.shape, rng), dict(kernel_size=case.kernel_size, filt_size=3, stride=2)
    if op.startswith("median"):
        if op == "median-ties":
            x = rng.integers(-2, 3, size=case.shape).astype(np.float64)
        return x, case.window()
    if op == "wavelet":
        return x, {}
    return x, dict(output_size=tuple(max(1, (n + 1) // 2) for n in case.shape[2:]))


OPS = {
    "blur-reflect": "blur_pool",
    "blur-constant": "blur_pool",
    "max_blur": "max_blur_pool",
    "median": "median_pool",
    "median-ties": "median_pool",
    "wavelet": "wavelet_pool",
    "spectral": "spectral_pool",
}


# Every window case for the blur and the median; the others on a spread of them (JAX compiles each).
SOME = ("2d-k3s2p1", "2d-aniso-channels-last", "1d", "3d")
PARAMS = [
    pytest.param(op, *c.values, id=f"{op}-{c.id}")
    for op in OPS
    for c in RESEARCH_CASES
    if op in ("blur-reflect", "median") or c.id in SOME
]


@pytest.mark.parametrize("op,case,layout", PARAMS)
def test_research_cases_match_numpy(op, case: Case, layout, rng):
    x, kw = _settings(op, case, rng)
    _check(OPS[op], _layout(x, layout), dict(kw, data_format=layout), rng, exact=op.startswith("median"))


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_blur_on_maps_smaller_than_the_padding(mode, rng):
    """antialiased-cnns#47: torch's reflection raises here; the reference repeats the reflection."""
    for size in (1, 2, 3):
        x = rng.standard_normal((1, 2, size, size + 1))
        _check("blur_pool2d", x, dict(filt_size=(7, 4), stride=2, pad_mode=mode), rng)


@pytest.mark.parametrize(
    "shape,kw",
    [
        ((2, 3, 11), dict(filt_size=4, stride=2, pad_mode="reflect")),
        ((1, 2, 6, 5, 4), dict(filt_size=(2, 3, 4), stride=(1, 2, 2), pad_mode="replicate")),
        ((2, 2, 7, 6), dict(filt_size=(5, 2), stride=(2, 1), pad_mode="reflect", padding="same")),
        ((1, 2, 9, 9), dict(filt_size=4, pad_mode="constant", padding=1)),
        ((2, 3, 9, 8), dict(filt_size=1, stride=(3, 1))),
        ((1, 2, 7, 8), dict(kernel_size=3, filt_size=4, stride=3, pad_mode="replicate", ceil_mode=True)),
    ],
    ids=["1d-even", "3d-aniso", "2d-same", "kornia-padding", "subsample", "max-blur-k3"],
)
def test_blur_settings_match_numpy(shape, kw, rng):
    op = "max_blur_pool" if "kernel_size" in kw else "blur_pool"
    _check(op, distinct(shape, rng), kw, rng)


def test_kornia_documented_examples_exactly():
    x = tensor(np.eye(5)[None, None])
    expected = [[0.3125, 0.0625, 0.0], [0.0625, 0.375, 0.0625], [0.0, 0.0625, 0.3125]]
    cf = dict(data_format="channels_first")
    assert to_numpy(KF.blur_pool2d(x, 3, pad_mode="constant", **cf))[0, 0].tolist() == expected
    got = to_numpy(KF.max_blur_pool2d(x, 2, 3, pad_mode="constant", **cf))[0, 0].tolist()
    assert got == [[0.5625, 0.3125], [0.3125, 0.875]]


@pytest.mark.parametrize(
    "shape,sizes",
    [
        ((2, 3, 8, 8), (4, 4)),
        ((1, 2, 7, 9), (3, 4)),
        ((1, 2, 6, 5), (5, 2)),
        ((2, 3, 10), 5),
        ((1, 2, 4, 6, 5), (2, None, 3)),
        ((1, 1, 6, 6), 1),
    ],
    ids=["even", "odd-in", "odd-out", "1d", "3d-none", "dc-only"],
)
def test_spectral_sizes_match_numpy(shape, sizes, rng):
    """Even and odd sizes in and out: the output's Nyquist term is the average of +-m/2."""
    _check("spectral_pool", rng.standard_normal(shape), dict(output_size=sizes), rng)


def test_spectral_identity_nyquist_and_errors(rng):
    x = rng.standard_normal((1, 2, 5, 6))
    cf = dict(data_format="channels_first")
    assert np.array_equal(to_numpy(KF.spectral_pool2d(tensor(x), (5, 6), **cf)), x)
    assert np.array_equal(to_numpy(KF.spectral_pool2d(tensor(x), (None, 6), **cf)), x)
    t = np.arange(8.0)
    nyq = to_numpy(KF.spectral_pool1d(tensor(np.cos(np.pi * t / 2)[None, None]), 4, **cf))
    np.testing.assert_allclose(nyq, [[[0.5, -0.5, 0.5, -0.5]]], atol=1e-12)  # halved: real and symmetric
    with pytest.raises(PoolingInputError, match=r"output_size \(6, 6\) is larger than the input \(5, 6\)"):
        KF.spectral_pool2d(tensor(x), 6, **cf)
    with pytest.raises(PoolingConfigError, match="output_size must be >= 1"):
        KF.spectral_pool2d(tensor(x), 0, **cf)


# --------------------------------------------------------------------------- NaN, inf, ties, chunks


def test_median_nan_inf_and_ties_follow_the_numpy_rules(rng):
    x = np.array(
        [
            [
                [
                    [np.nan, 1.0, 2.0, 2.0],
                    [np.inf, -np.inf, 3.0, 2.0],
                    [0.0, 5.0, 5.0, np.inf],
                    [1.0, 1.0, 1.0, 1.0],
                ]
            ]
        ]
    )
    for kw in (
        dict(kernel_size=2, stride=1, padding=1),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    ):
        _check("median_pool2d", x, kw, rng, exact=True)
    # A median of +inf: the padding (+inf in the sort) must not take the gradient from the first real +inf.
    x1 = np.array([[[np.inf, np.inf, 0.0, 1.0]]])
    got, (gx,) = value_and_grads(
        lambda t: KF.median_pool1d(t, 3, 1, 1, data_format="channels_first"),
        [x1],
        np.array([[[1.0, 10, 100, 1000]]]),
    )
    assert got.tolist() == [[[np.inf, np.inf, 1.0, 0.0]]] and gx.tolist() == [[[11.0, 0.0, 1000.0, 100.0]]]


def test_median_chunks_give_the_same_result(rng, monkeypatch):
    x = rng.integers(-3, 4, size=(2, 3, 11, 9)).astype(np.float64)
    g = rng.standard_normal((2, 3, 6, 5))
    kw = dict(kernel_size=3, stride=2, padding=1, data_format="channels_first")
    y, (gx,) = value_and_grads(lambda t: KF.median_pool2d(t, **kw), [x], g)
    monkeypatch.setattr(signal, "_STACK_BYTES", 1)  # one output row per chunk
    y1, (gx1,) = value_and_grads(lambda t: KF.median_pool2d(t, **kw), [x], g)
    assert np.array_equal(y, y1) and np.array_equal(gx, gx1)
    np.testing.assert_array_equal(y, vjp("median_pool2d", x, **kw)[0])


def test_wavelet_non_finite_values_stay_in_their_block():
    x = np.ones((1, 1, 4, 5))
    x[0, 0, 0, 0], x[0, 0, 3, 4] = np.nan, np.inf
    x[0, 0, 2, 0], x[0, 0, 3, 1] = np.inf, -np.inf
    y = to_numpy(KF.wavelet_pool2d(tensor(x), data_format="channels_first"))
    np.testing.assert_allclose(y, vjp("wavelet_pool2d", x)[0], rtol=1e-15)  # NaN and inf where NumPy has them
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y[0, 0, 1, 0]) and y[0, 0, 1, 2] == np.inf
    assert np.isfinite(y[0, 0, 0, 1:]).all() and np.isfinite(y[0, 0, 1, 1])
    with pytest.raises(PoolingConfigError, match="wavelet must be one of 'haar', got 'db2'"):
        KF.wavelet_pool2d(tensor(x), wavelet="db2")


ALL = [
    ("blur_pool2d", dict(filt_size=3, stride=2)),
    ("max_blur_pool2d", dict(kernel_size=2, filt_size=3, stride=2)),
    ("spectral_pool2d", dict(output_size=(5, 4))),
    ("wavelet_pool2d", {}),
    ("median_pool2d", dict(kernel_size=3, stride=2, padding=1)),
]


@pytest.mark.parametrize("op,kw", ALL, ids=[o for o, _ in ALL])
def test_float16_is_computed_in_float32(op, kw, rng):
    x = rng.standard_normal((2, 3, 12, 11)).astype(np.float16)
    kw = dict(kw, data_format="channels_first")
    y = getattr(KF, op)(tensor(x), **kw)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    ref = vjp(op, x.astype(np.float32), **kw)[0]
    if op == "median_pool2d":  # a sample of the input: exact
        np.testing.assert_array_equal(to_numpy(y), ref.astype(np.float16))
    else:
        np.testing.assert_allclose(to_numpy(y).astype(np.float32), ref, rtol=2e-3, atol=2e-3)


def test_errors_name_the_argument(rng):
    x = tensor(rng.standard_normal((1, 2, 6, 6)))
    cf = dict(data_format="channels_first")
    with pytest.raises(PoolingConfigError, match="filt_size must be between 1 and 7"):
        KF.blur_pool2d(x, 8, **cf)
    with pytest.raises(
        PoolingConfigError, match="pad_mode must be one of 'reflect', 'constant', 'replicate'"
    ):
        KF.blur_pool2d(x, pad_mode="circular", **cf)
    with pytest.raises(PoolingConfigError, match="padding must be 'antialiased'"):
        KF.blur_pool2d(x, padding="full", **cf)
    with pytest.raises(PoolingInputError, match="does not fit"):
        KF.max_blur_pool2d(x, 7, **cf)
    with pytest.raises(PoolingConfigError, match="padding=2 on axis 0 is more than half of kernel_size=3"):
        KF.median_pool2d(x, 3, padding=2, **cf)
    with pytest.raises(PoolingInputError, match="median_pool3d expects a 5-D tensor"):
        KF.median_pool3d(x, 2, **cf)


# --------------------------------------------------------------------------- layers


def test_max_blur_pool_maps_the_arguments(rng):
    x = rng.standard_normal((1, 9, 9, 2)).astype(np.float32)
    layer = PK.MaxBlurPool2D(3, strides=2)
    assert (layer.pool_size, layer.filt_size, layer.strides) == (3, 3, 2)
    m = vjp("max_pool2d", x, 3, stride=1, data_format="channels_last")[0]
    ref = vjp("blur_pool2d", m, 3, 2, data_format="channels_last")[0]
    np.testing.assert_allclose(to_numpy(layer(tensor(x))), ref, rtol=1e-6, atol=1e-6)


def test_layers_have_no_weights_and_follow_the_data_format(rng):
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    for layer, op, kw in [
        (
            PK.BlurPool2D(4, 2, "constant", padding=1, data_format="channels_first"),
            "blur_pool2d",
            dict(filt_size=4, stride=2, pad_mode="constant", padding=1),
        ),
        (
            PK.SpectralPool2D((3, 4), data_format="channels_first"),
            "spectral_pool2d",
            dict(output_size=(3, 4)),
        ),
        (PK.WaveletPool2D(data_format="channels_first"), "wavelet_pool2d", {}),
        (
            PK.MedianPool2D(3, 2, 1, data_format="channels_first"),
            "median_pool2d",
            dict(kernel_size=3, stride=2, padding=1),
        ),
    ]:
        np.testing.assert_allclose(to_numpy(layer(tensor(x))), vjp(op, x, **kw)[0], rtol=1e-5, atol=1e-6)
        assert layer.weights == []


def test_layer_construction_errors():
    with pytest.raises(PoolingConfigError, match="BlurPool2D: filt_size must be between 1 and 7"):
        PK.BlurPool2D(filt_size=8)
    with pytest.raises(PoolingConfigError, match="pad_mode must be one of"):
        PK.BlurPool2D(pad_mode="circular")
    with pytest.raises(PoolingConfigError, match="MaxBlurPool2D: pool_size must be >= 1"):
        PK.MaxBlurPool2D(0)
    with pytest.raises(PoolingConfigError, match="stride must be >= 1"):
        PK.MaxBlurPool2D(strides=0)
    with pytest.raises(PoolingConfigError, match="SpectralPool2D: output_size must be >= 1"):
        PK.SpectralPool2D((0, 3))
    with pytest.raises(
        PoolingInputError, match=r"SpectralPool2D: output_size \(9, 3\) is larger than the input"
    ):
        PK.SpectralPool2D((9, 3))(keras.Input((8, 8, 2)))
    with pytest.raises(PoolingConfigError, match="wavelet must be one of 'haar'"):
        PK.WaveletPool2D(wavelet="db4")
    with pytest.raises(PoolingConfigError, match="padding=2 on axis 0 is more than half of pool_size=3"):
        PK.MedianPool2D(3, padding=2)
    with pytest.raises(PoolingConfigError, match="data_format must be one of"):
        PK.MedianPool2D(3, data_format="NHWC")
