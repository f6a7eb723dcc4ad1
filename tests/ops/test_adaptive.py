"""Adaptive and global pooling: PyTorch parity, non-divisible bins, anchors."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

from poolkit.ops import (
    adaptive_avg_pool,
    adaptive_max_pool,
    adaptive_max_pool2d,
    global_avg_pool,
    global_max_pool,
    vjp,
)

from cases import ADAPTIVE_CASES
from helpers import check_fd, distinct, torch_vjp

TMAX = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}
TAVG = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


@pytest.mark.parametrize("ties", [False, True], ids=["normal", "ties"])
@pytest.mark.parametrize("shape,out", ADAPTIVE_CASES)
def test_max_matches_torch(shape, out, ties, rng):
    nd = len(shape) - 2
    x = rng.integers(-2, 3, size=shape).astype(float) if ties else rng.standard_normal(shape)
    (y, idx), pullback = vjp(f"adaptive_max_pool{nd}d", x, output_size=out, return_indices=True)
    g = rng.standard_normal(y.shape)
    ty, tg, tidx = torch_vjp(lambda t: TMAX[nd](t, out, return_indices=True), x, g)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(idx, tidx)
    np.testing.assert_allclose(pullback(g)["x"], tg, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape,out", ADAPTIVE_CASES)
def test_avg_matches_torch(shape, out, rng):
    nd = len(shape) - 2
    x = rng.standard_normal(shape)
    y, pullback = vjp(f"adaptive_avg_pool{nd}d", x, output_size=out)
    g = rng.standard_normal(y.shape)
    ty, tg, _ = torch_vjp(TAVG[nd], x, g, out)
    np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(pullback(g)["x"], tg, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(adaptive_avg_pool(x.astype(np.float32), out), ty, rtol=1e-6, atol=1e-6)


def test_nan_rule_matches_torch(rng):
    x = rng.standard_normal((2, 3, 7, 10))
    x[0, 0, 1, 2] = x[0, 0, 1, 3] = x[1, 2, 5, 9] = np.nan
    y, idx = adaptive_max_pool2d(x, (3, 4), return_indices=True)
    ty, _, tidx = torch_vjp(lambda t: F.adaptive_max_pool2d(t, (3, 4), return_indices=True), x, None)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(idx, tidx)


def test_pytorch_190064_anchor():
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    y, idx = adaptive_max_pool2d(x, 3, return_indices=True)
    assert y.ravel().tolist() == [6, 8, 9, 16, 18, 19, 21, 23, 24]
    assert idx.ravel().tolist() == [6, 8, 9, 16, 18, 19, 21, 23, 24]


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_finite_differences(layout, rng):
    x = distinct((1, 2, 7, 5), rng)
    if layout == "channels_last":
        x = np.moveaxis(x, 1, -1).copy()
    check_fd("adaptive_max_pool2d", x, rng, output_size=(3, 4), data_format=layout)
    check_fd("adaptive_avg_pool2d", x, rng, output_size=(3, 7), data_format=layout)
    check_fd("adaptive_avg_pool1d", rng.standard_normal((2, 2, 7)), rng, output_size=3)
    check_fd("adaptive_max_pool3d", distinct((1, 1, 3, 4, 5), rng), rng, output_size=(2, 3, 2))


def test_channels_last(rng):
    x = rng.standard_normal((2, 3, 7, 10))
    xl = np.moveaxis(x, 1, -1).copy()
    np.testing.assert_array_equal(
        np.moveaxis(adaptive_max_pool(xl, (3, 4), data_format="channels_last"), -1, 1),
        adaptive_max_pool(x, (3, 4)),
    )
    np.testing.assert_allclose(
        np.moveaxis(adaptive_avg_pool(xl, (3, 4), data_format="channels_last"), -1, 1),
        adaptive_avg_pool(x, (3, 4)),
        rtol=1e-12,
        atol=1e-15,
    )


def test_global_pools(rng):
    x = rng.standard_normal((2, 3, 5, 6))
    np.testing.assert_array_equal(global_max_pool(x), x.max(axis=(2, 3)))
    np.testing.assert_allclose(global_avg_pool(x), x.mean(axis=(2, 3)), rtol=1e-14)
    assert global_avg_pool(x, keepdims=True).shape == (2, 3, 1, 1)
    xl = np.moveaxis(x, 1, -1)
    np.testing.assert_allclose(
        global_avg_pool(xl, data_format="channels_last"), x.mean(axis=(2, 3)), rtol=1e-14
    )
    assert global_max_pool(xl, keepdims=True, data_format="channels_last").shape == (2, 1, 1, 3)
    assert global_avg_pool(rng.standard_normal((2, 3, 4, 5, 6))).shape == (2, 3)
    y, pullback = vjp("global_avg_pool", x)
    np.testing.assert_allclose(pullback(np.ones_like(y))["x"], np.full(x.shape, 1 / 30), rtol=1e-14)
    check_fd("global_max_pool", distinct((2, 2, 3, 4), rng), rng)
    check_fd("global_avg_pool", rng.standard_normal((2, 2, 3, 4)), rng, keepdims=True)
