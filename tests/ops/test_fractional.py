"""fractional_max_pool: exact PyTorch parity given the same random samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import fractional_max_pool, fractional_max_pool2d, fractional_max_pool3d, vjp

from helpers import check_fd, distinct


@pytest.mark.parametrize(
    "shape,k,kw",
    [
        pytest.param((2, 3, 10, 9), 2, dict(output_size=(5, 4)), id="2d-size"),
        pytest.param((2, 3, 11, 13), 3, dict(output_ratio=(0.5, 0.6)), id="2d-ratio"),
        pytest.param((1, 2, 9, 9), (2, 3), dict(output_size=(7, 5)), id="2d-overlap"),
        pytest.param((1, 2, 7, 9, 8), 2, dict(output_size=(3, 4, 5)), id="3d-size"),
        pytest.param((1, 2, 6, 6), 2, dict(output_size=1), id="2d-output-1"),
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_torch_with_random_samples(shape, k, kw, dtype, rng):
    nd = len(shape) - 2
    x = rng.standard_normal(shape).astype(dtype)
    u = rng.random((shape[0], shape[1], nd)).astype(dtype)
    (y, idx), pullback = vjp(
        f"fractional_max_pool{nd}d", x, kernel_size=k, return_indices=True, samples=u, **kw
    )
    tf = F.fractional_max_pool2d if nd == 2 else F.fractional_max_pool3d
    xt = torch.tensor(x, requires_grad=True)
    ty, tidx = tf(xt, k, return_indices=True, _random_samples=torch.tensor(u), **kw)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    g = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(pullback(g)["x"], xt.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_rng_is_reproducible(rng):
    x = rng.standard_normal((2, 3, 10, 10))
    a = fractional_max_pool2d(x, 2, output_size=6, rng=5)
    b = fractional_max_pool2d(x, 2, output_size=6, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, fractional_max_pool2d(x, 2, output_size=6, rng=6))


def test_finite_differences(rng):
    x = distinct((1, 2, 9, 8), rng)
    u = rng.random((1, 2, 2))
    check_fd("fractional_max_pool2d", x, rng, kernel_size=2, output_size=(6, 5), samples=u)
    check_fd(
        "fractional_max_pool1d",
        distinct((2, 2, 11), rng),
        rng,
        kernel_size=3,
        output_size=5,
        samples=rng.random((2, 2, 1)),
    )


def test_channels_last(rng):
    x = rng.standard_normal((2, 3, 10, 9))
    u = rng.random((2, 3, 2))
    yl = fractional_max_pool(np.moveaxis(x, 1, -1), 2, (5, 4), samples=u, data_format="channels_last")
    np.testing.assert_array_equal(np.moveaxis(yl, -1, 1), fractional_max_pool(x, 2, (5, 4), samples=u))


def test_errors(rng):
    x = rng.standard_normal((1, 1, 8, 8))
    with pytest.raises(PoolingConfigError, match="exactly one of output_size and output_ratio"):
        fractional_max_pool2d(x, 2, output_size=4, output_ratio=0.5)
    with pytest.raises(PoolingConfigError, match="exactly one of output_size and output_ratio"):
        fractional_max_pool2d(x, 2)
    with pytest.raises(PoolingConfigError, match="output_ratio must be < 1"):
        fractional_max_pool2d(x, 2, output_ratio=1.5)
    with pytest.raises(PoolingConfigError, match="output_ratio must be a finite number, got nan"):
        fractional_max_pool2d(x, 2, output_ratio=float("nan"))
    with pytest.raises(PoolingInputError, match=r"needs at least 10 input samples on axis 0"):
        fractional_max_pool2d(x, 3, output_size=8)
    with pytest.raises(PoolingInputError, match=r"samples must have shape \(N, C, 2\)"):
        fractional_max_pool2d(x, 2, output_size=4, samples=np.zeros((1, 1, 3)))
    with pytest.raises(PoolingConfigError, match="rng must be None, an int seed or a numpy.random.Generator"):
        fractional_max_pool3d(rng.standard_normal((1, 1, 6, 6, 6)), 2, output_size=3, rng="seed")
