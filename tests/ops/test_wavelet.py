"""wavelet_pool: the paper's two-level Haar route, odd sizes, adjoint, gradients."""

from __future__ import annotations

import numpy as np
import pytest

from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import avg_pool, vjp
from poolkit.ops.wavelet import wavelet_pool, wavelet_pool1d, wavelet_pool2d, wavelet_pool3d

from helpers import check_grads, traced_peak

R2 = np.sqrt(2.0)

SHAPES = [
    pytest.param((2, 3, 8, 8), id="2d-even"),
    pytest.param((1, 2, 7, 6), id="2d-odd-rows"),
    pytest.param((2, 2, 5, 9), id="2d-odd"),
    pytest.param((1, 1, 1, 3), id="2d-size-1"),
    pytest.param((2, 3, 11), id="1d-odd"),
    pytest.param((1, 2, 12), id="1d-multiple-of-4"),
    pytest.param((1, 2, 3, 4, 5), id="3d"),
]


# ---- a literal implementation of the paper's steps (Haar FWT, symmetric extension for odd sizes)


def _dwt(a: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    if a.shape[axis] % 2:
        a = np.concatenate([a, np.take(a, [-1], axis=axis)], axis=axis)  # half-sample symmetric
    even, odd = np.take(a, range(0, a.shape[axis], 2), axis), np.take(a, range(1, a.shape[axis], 2), axis)
    return (even + odd) / R2, (even - odd) / R2


def _idwt(lo: np.ndarray, hi: np.ndarray, axis: int, n: int) -> np.ndarray:
    even, odd = (lo + hi) / R2, (lo - hi) / R2
    out = np.stack([even, odd], axis=axis + 1)
    shape = list(lo.shape)
    shape[axis] *= 2
    return np.take(out.reshape(shape), range(n), axis=axis)


def _decompose(x: np.ndarray, axes: list[int]) -> dict[tuple[int, ...], np.ndarray]:
    """All 2^d subbands, keyed by (0 = low, 1 = high) per axis."""
    bands = {(): x}
    for axis in axes:
        bands = {k + (b,): v for k, a in bands.items() for b, v in enumerate(_dwt(a, axis))}
    return bands


def _reconstruct(bands: dict, axes: list[int], sizes: list[int]) -> np.ndarray:
    for i in reversed(range(len(axes))):
        merged = {}
        for key in {k[:i] for k in bands}:
            merged[key] = _idwt(bands[key + (0,)], bands[key + (1,)], axes[i], sizes[i])
        bands = merged
    return bands[()]


def _paper(x: np.ndarray) -> np.ndarray:
    axes = list(range(2, x.ndim))
    level1 = _decompose(x, axes)
    ll1 = level1[(0,) * len(axes)]  # the first-level details are discarded
    level2 = _decompose(ll1, axes)
    return _reconstruct(level2, axes, [ll1.shape[a] for a in axes])


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_the_papers_two_level_route(shape, rng):
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(wavelet_pool(x), _paper(x), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", SHAPES)
def test_finite_differences(shape, rng):
    check_grads("wavelet_pool", {"x": rng.standard_normal(shape)}, rng)


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_is_the_adjoint(shape, rng):
    x = rng.standard_normal(shape)
    y, pullback = vjp("wavelet_pool", x)
    v = rng.standard_normal(y.shape)
    assert abs(np.vdot(y, v) - np.vdot(x, pullback(v)["x"])) <= 1e-12 * max(1.0, abs(np.vdot(y, v)))


def test_even_sizes_are_a_scaled_average_pool(rng):
    for shape in ((2, 3, 8, 6), (2, 3, 10), (1, 2, 4, 6, 2)):
        x = rng.standard_normal(shape)
        d = len(shape) - 2
        np.testing.assert_allclose(wavelet_pool(x), 2 ** (d / 2) * avg_pool(x, 2), rtol=1e-13)


def test_odd_size_rule_repeats_the_last_sample():
    x = np.array([[[1.0, 3.0, 2.0, 5.0, 4.0]]])
    np.testing.assert_allclose(wavelet_pool1d(x)[0, 0], [4 / R2, 7 / R2, 8 / R2], rtol=1e-15)
    x2 = np.arange(9.0).reshape(1, 1, 3, 3)
    # corner block: x[2, 2] = 8 counted four times
    np.testing.assert_allclose(wavelet_pool2d(x2)[0, 0], [[4.0, 7.0], [13.0, 16.0]], rtol=1e-15)
    g = vjp("wavelet_pool2d", x2)[1](np.ones((1, 1, 2, 2)))["x"]
    np.testing.assert_allclose(g[0, 0], [[0.5, 0.5, 1.0], [0.5, 0.5, 1.0], [1.0, 1.0, 2.0]], rtol=1e-15)
    assert wavelet_pool3d(np.ones((1, 1, 1, 1, 1)))[0, 0, 0, 0, 0] == pytest.approx(2 * R2)


def test_degenerate_inputs_raise_no_warning(rng):
    with np.errstate(all="raise"):
        c = np.full((1, 2, 7, 6), 1.5)
        np.testing.assert_allclose(wavelet_pool2d(c), np.full((1, 2, 4, 3), 3.0), rtol=1e-15)
        assert (wavelet_pool2d(np.zeros((1, 1, 5, 5))) == 0).all()
        big = rng.choice([-1e4, 1e4], size=(2, 3, 9, 8)).astype(np.float32)
        y, pullback = vjp("wavelet_pool2d", big)
        np.testing.assert_allclose(y, _paper(big.astype(np.float64)), rtol=1e-6, atol=1e-3)
        assert np.isfinite(pullback(np.ones_like(y))["x"]).all()


def test_nan_and_inf_stay_in_their_block():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 3, 3] = np.inf
    x[0, 0, 0, 2], x[0, 0, 0, 3] = np.inf, -np.inf
    with np.errstate(all="raise"):
        y = wavelet_pool2d(x)[0, 0]
    assert np.isnan(y[0, 0]) and np.isnan(y[0, 1]) and y[1, 1] == np.inf and y[1, 0] == 0


def test_layouts_dtypes_and_empty_batch(rng):
    x = rng.standard_normal((2, 3, 9, 8))
    yl = wavelet_pool(np.moveaxis(x, 1, -1), data_format="channels_last")
    np.testing.assert_allclose(np.moveaxis(yl, -1, 1), wavelet_pool(x), rtol=1e-12, atol=1e-15)
    y16, pb = vjp("wavelet_pool2d", x.astype(np.float16))
    assert y16.dtype == np.float16 and pb(np.ones_like(y16))["x"].dtype == np.float16
    np.testing.assert_allclose(y16, wavelet_pool2d(x.astype(np.float16).astype(np.float32)), rtol=2e-3)
    e, pb = vjp("wavelet_pool2d", np.zeros((0, 3, 9, 8)))
    assert e.shape == (0, 3, 5, 4) and pb(e)["x"].shape == (0, 3, 9, 8)
    np.testing.assert_allclose(wavelet_pool1d(x[0, :, 0]), wavelet_pool1d(x[:1, :, 0])[0])


def test_errors():
    with pytest.raises(PoolingConfigError, match="wavelet must be one of 'haar', got 'db2'"):
        wavelet_pool2d(np.zeros((1, 1, 4, 4)), wavelet="db2")
    with pytest.raises(PoolingInputError, match="wavelet_pool2d expects a 4-D array"):
        wavelet_pool2d(np.zeros((4, 4)))
    with pytest.raises(PoolingInputError, match="at least one spatial axis"):
        wavelet_pool(np.zeros((4, 4)))


def test_peak_memory_within_three_times_input_plus_output():
    x = np.random.default_rng(0).standard_normal((16, 16, 128, 128), dtype=np.float32)
    y = wavelet_pool2d(x)
    g = np.ones_like(y)
    io = x.nbytes + y.nbytes
    peak, y = traced_peak("wavelet_pool2d", x, grad=g)
    assert peak <= 3 * io, f"peak {peak / io:.2f} x (input + output)"
