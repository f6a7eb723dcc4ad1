"""spectral_pool: DFT-matrix oracle, adjoint identity, torch.fft parity, corner cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import vjp
from poolkit.ops.spectral import spectral_pool, spectral_pool1d, spectral_pool2d, spectral_pool3d

from helpers import check_grads, torch_vjp, traced_peak

# (input shape, output size): odd/even in, odd/even out, unchanged axes, 1-D to 3-D
SHAPES = [
    pytest.param((2, 3, 8, 8), (4, 4), id="even-to-even"),
    pytest.param((2, 2, 7, 9), (4, 5), id="odd-to-mixed"),
    pytest.param((1, 2, 6, 5), (3, 2), id="even-to-odd"),
    pytest.param((1, 2, 6, 7), (6, 3), id="one-axis-kept"),
    pytest.param((2, 3, 10), (4,), id="1d"),
    pytest.param((1, 2, 5), (1,), id="1d-to-dc"),
    pytest.param((1, 2, 4, 5, 6), (2, 3, 4), id="3d"),
]


def _axis_matrix(n: int, m: int) -> np.ndarray:
    """The n -> m operator written from its definition with complex exponentials."""
    t = np.arange(n)
    tau = np.arange(m)
    out = np.zeros((m, n), dtype=complex)
    for q in range(-(m // 2), (m + 1) // 2):  # the output's frequencies
        if m < n and m % 2 == 0 and q == -(m // 2):
            # the output Nyquist stands for the input frequencies +m/2 and -m/2: their average
            coef = 0.5 * (np.exp(-2j * np.pi * q * t / n) + np.exp(2j * np.pi * q * t / n))
        else:
            coef = np.exp(-2j * np.pi * q * t / n)
        out += np.outer(np.exp(2j * np.pi * q * tau / m), coef) / n
    return out


def _oracle(x: np.ndarray, sizes) -> np.ndarray:
    y = x.astype(complex)
    for j, m in enumerate(sizes):
        a = _axis_matrix(x.shape[2 + j], m)
        y = np.moveaxis(np.tensordot(a, np.moveaxis(y, 2 + j, 0), axes=1), 0, 2 + j)
    assert np.abs(y.imag).max() < 1e-12  # the corner-case rule makes the output real
    return y.real


@pytest.mark.parametrize("shape,sizes", SHAPES)
def test_matches_the_dft_definition(shape, sizes, rng):
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(spectral_pool(x, sizes), _oracle(x, sizes), rtol=1e-10, atol=1e-12)


def test_odd_outputs_are_the_plain_centred_crop(rng):
    # With odd output sizes there is no Nyquist term: y = (M/N) ifftn(crop(fftn(x))), exactly the paper.
    x = rng.standard_normal((2, 2, 8, 9))
    X = np.fft.fftshift(np.fft.fftn(x, axes=(2, 3)), axes=(2, 3))
    crop = X[:, :, 4 - 2 : 4 + 3, 4 - 1 : 4 + 2]  # 5 x 3 centred frequencies
    y = np.fft.ifftn(np.fft.ifftshift(crop, axes=(2, 3)), axes=(2, 3)) * (15 / 72)
    assert np.abs(y.imag).max() < 1e-12
    np.testing.assert_allclose(spectral_pool2d(x, (5, 3)), y.real, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape,sizes", SHAPES)
def test_finite_differences(shape, sizes, rng):
    check_grads("spectral_pool", {"x": rng.standard_normal(shape)}, rng, output_size=sizes)


@pytest.mark.parametrize("shape,sizes", SHAPES)
def test_backward_is_the_adjoint(shape, sizes, rng):
    x = rng.standard_normal(shape)
    y, pullback = vjp("spectral_pool", x, output_size=sizes)
    v = rng.standard_normal(y.shape)
    lhs = np.vdot(y, v)  # <A x, v>
    rhs = np.vdot(x, pullback(v)["x"])  # <x, A^T v>
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


def _torch_spectral(xt, sizes):
    y = xt
    for j, m in enumerate(sizes):
        d = 2 + j
        n = y.shape[d]
        if m == n:
            continue
        spec = torch.fft.rfft(y, dim=d).narrow(d, 0, m // 2 + 1)
        y = torch.fft.irfft(spec, n=m, dim=d) * (m / n)
    return y


@pytest.mark.parametrize("shape,sizes", SHAPES)
def test_matches_torch_fft_forward_and_backward(shape, sizes, rng):
    x = rng.standard_normal(shape)
    y, pullback = vjp("spectral_pool", x, output_size=sizes)
    g = rng.standard_normal(y.shape)
    ty, tg, _ = torch_vjp(_torch_spectral, x, g, sizes)
    np.testing.assert_allclose(y, ty, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(pullback(g)["x"], tg, rtol=1e-10, atol=1e-13)


def test_full_size_is_the_identity(rng):
    x = rng.standard_normal((2, 3, 7, 8))
    y, pullback = vjp("spectral_pool2d", x, output_size=(7, 8))
    np.testing.assert_array_equal(y, x)
    g = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(pullback(g)["x"], g)
    np.testing.assert_array_equal(spectral_pool2d(x, (None, 8)), x)


def test_pooling_twice_equals_pooling_once(rng):
    x = rng.standard_normal((1, 2, 12, 11))
    np.testing.assert_allclose(
        spectral_pool2d(spectral_pool2d(x, (8, 6)), (5, 4)),
        spectral_pool2d(x, (5, 4)),
        rtol=1e-10,
        atol=1e-13,
    )


def test_flip_equivariance(rng):
    # The averaged Nyquist term keeps the operator symmetric: flipping an axis commutes with pooling.
    x = rng.standard_normal((1, 2, 8, 10))

    def flip(a, axis):
        return np.roll(np.flip(a, axis), 1, axis)

    y = spectral_pool2d(x, (4, 6))
    for axis in (2, 3):
        np.testing.assert_allclose(spectral_pool2d(flip(x, axis), (4, 6)), flip(y, axis), atol=1e-13)


def test_constant_zero_and_large_inputs(rng):
    with np.errstate(all="raise"):
        for shape, sizes in (((1, 2, 7, 8), (3, 4)), ((2, 1, 9), (2,)), ((1, 1, 3, 4, 5), (1, 2, 3))):
            c = np.full(shape, -2.5)
            np.testing.assert_allclose(
                spectral_pool(c, sizes), np.full((*shape[:2], *sizes), -2.5), rtol=1e-14
            )
            assert (spectral_pool(np.zeros(shape), sizes) == 0).all()
        big = rng.choice([-1e4, 1e4], size=(2, 3, 8, 8)).astype(np.float32)
        y, pullback = vjp("spectral_pool2d", big, output_size=3)
        np.testing.assert_allclose(y, _oracle(big.astype(np.float64), (3, 3)), rtol=1e-5, atol=1e-2)
        assert np.isfinite(pullback(np.ones_like(y))["x"]).all()


def test_non_finite_values_spoil_their_lines_only():
    x = np.zeros((1, 1, 4, 6))
    x[0, 0, 1, 2] = np.nan
    with np.errstate(all="raise"):
        y = spectral_pool2d(x, (4, 3))  # only axis 1 is pooled: the NaN stays in row 1
    assert np.isnan(y[0, 0, 1]).all() and (y[0, 0, [0, 2, 3]] == 0).all()
    x[0, 0, 1, 2] = np.inf
    with np.errstate(all="raise"):
        y, pullback = vjp("spectral_pool2d", x, output_size=(2, 3))  # every axis pooled: the whole map
        assert not np.isfinite(y).any() and np.isfinite(pullback(np.ones_like(y))["x"]).all()


def test_layouts_dtypes_and_empty_batch(rng):
    x = rng.standard_normal((2, 3, 9, 8))
    yl = spectral_pool(np.moveaxis(x, 1, -1), (4, 5), data_format="channels_last")
    np.testing.assert_allclose(np.moveaxis(yl, -1, 1), spectral_pool(x, (4, 5)), rtol=1e-12, atol=1e-14)
    y16, pb = vjp("spectral_pool2d", x.astype(np.float16), output_size=4)
    assert y16.dtype == np.float16 and pb(np.ones_like(y16))["x"].dtype == np.float16
    ref = spectral_pool2d(x.astype(np.float16).astype(np.float32), 4)
    np.testing.assert_allclose(y16, ref, rtol=2e-3, atol=2e-3)
    y32 = spectral_pool2d(x.astype(np.float32), 4)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, spectral_pool2d(x, 4), rtol=1e-4, atol=1e-5)
    e, pb = vjp("spectral_pool2d", np.zeros((0, 3, 8, 8)), output_size=4)
    assert e.shape == (0, 3, 4, 4) and pb(e)["x"].shape == (0, 3, 8, 8)
    np.testing.assert_allclose(spectral_pool1d(x[0, :, 0], 3), spectral_pool1d(x[:1, :, 0], 3)[0])
    assert spectral_pool3d(rng.standard_normal((2, 4, 5, 6)), 2).shape == (2, 2, 2, 2)


def test_errors():
    x = np.zeros((1, 1, 8, 8))
    with pytest.raises(
        PoolingInputError, match=r"larger than the input \(8, 8\) on spatial axis 1 \(9 > 8\)"
    ):
        spectral_pool2d(x, (4, 9))
    with pytest.raises(PoolingConfigError, match="output_size must be >= 1 on every axis, got 0"):
        spectral_pool2d(x, 0)
    with pytest.raises(PoolingConfigError, match="output_size must be an int or a sequence of 2"):
        spectral_pool2d(x, (2, 2, 2))
    with pytest.raises(PoolingConfigError, match="output_size is required"):
        spectral_pool2d(x, None)
    with pytest.raises(PoolingInputError, match="floating-point"):
        spectral_pool2d(x.astype(np.int32), 2)


def test_peak_memory_within_three_times_input_plus_output():
    x = np.random.default_rng(0).standard_normal((16, 16, 128, 128), dtype=np.float32)
    kw = dict(output_size=(64, 48))
    y = vjp("spectral_pool2d", x, **kw)[0]
    g = np.ones_like(y)
    io = x.nbytes + y.nbytes
    peak, y = traced_peak("spectral_pool2d", x, **kw, grad=g)
    assert peak <= 3 * io, f"peak {peak / io:.2f} x (input + output)"
