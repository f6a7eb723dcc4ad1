"""max_unpool: inverse of max_pool's indices, PyTorch parity, duplicate rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poolkit.errors import PoolingInputError
from poolkit.ops import max_pool, max_pool2d, max_unpool, max_unpool1d, max_unpool2d, vjp

from helpers import numeric_grad

TUNPOOL = {1: F.max_unpool1d, 2: F.max_unpool2d, 3: F.max_unpool3d}


@pytest.mark.parametrize(
    "shape,k,s,p,out",
    [
        pytest.param((2, 3, 8, 8), 2, 2, 0, None, id="2d"),
        pytest.param((2, 3, 9, 9), 2, 2, 0, (9, 9), id="2d-output-size"),
        pytest.param((2, 3, 9, 11), 3, 2, 1, None, id="2d-pad"),
        pytest.param((2, 3, 10), 2, 2, 0, None, id="1d"),
        pytest.param((1, 2, 4, 6, 6), 2, 2, 0, None, id="3d"),
    ],
)
def test_matches_torch(shape, k, s, p, out, rng):
    nd = len(shape) - 2
    x = rng.standard_normal(shape)
    y, idx = max_pool(x, k, s, p, return_indices=True)
    ours, pullback = vjp(f"max_unpool{nd}d", y, idx, kernel_size=k, stride=s, padding=p, output_size=out)
    yt = torch.tensor(y, requires_grad=True)
    theirs = TUNPOOL[nd](yt, torch.tensor(idx), k, s, p, output_size=out)
    np.testing.assert_array_equal(ours, theirs.detach().numpy())
    g = rng.standard_normal(ours.shape)
    theirs.backward(torch.tensor(g))
    # Overlapping windows can pick the same winner twice (same value, so the forward
    # agrees); PyTorch then sends gradient to every duplicate, poolkit only to the last.
    expected = yt.grad.numpy().reshape(idx.shape[0], idx.shape[1], -1).copy()
    planes = idx.reshape(idx.shape[0], idx.shape[1], -1)
    for n, c in np.ndindex(*planes.shape[:2]):
        seen = set()
        for i in range(planes.shape[2] - 1, -1, -1):
            if planes[n, c, i] in seen:
                expected[n, c, i] = 0.0
            seen.add(planes[n, c, i])
    np.testing.assert_allclose(pullback(g)["x"], expected.reshape(y.shape), rtol=1e-14)


def test_duplicates_last_wins_and_only_it_gets_gradient():
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    idx = np.array([[[2, 0, 2, 1]]])
    y, pullback = vjp("max_unpool1d", x, idx, kernel_size=1, output_size=(4,))
    np.testing.assert_array_equal(y, [[[2.0, 4.0, 3.0, 0.0]]])
    # PyTorch's CPU result here depends on how its threads split the input (pytorch#78249);
    # poolkit's rule is fixed: the last value in row-major order wins.
    np.testing.assert_array_equal(
        pullback(np.array([[[10.0, 20.0, 30.0, 40.0]]]))["x"], [[[0.0, 10.0, 30.0, 20.0]]]
    )


def test_roundtrip_and_tf_indices(rng):
    x = rng.standard_normal((2, 3, 8, 8))
    y, idx = max_pool2d(x, 2, return_indices=True)
    _, tf_idx = max_pool2d(x, 2, return_indices=True, index_format="tf", include_batch_in_index=True)
    a = max_unpool2d(y, idx, 2)
    np.testing.assert_array_equal(a, max_unpool2d(y, tf_idx, 2, index_format="tf"))
    placed = np.take_along_axis(a.reshape(2, 3, -1), idx.reshape(2, 3, -1), axis=2)
    np.testing.assert_array_equal(placed.reshape(y.shape), y)
    assert np.count_nonzero(a) == y.size
    yl = np.moveaxis(y, 1, -1)
    il = np.moveaxis(idx, 1, -1)
    np.testing.assert_array_equal(np.moveaxis(max_unpool2d(yl, il, 2, data_format="channels_last"), -1, 1), a)


def test_finite_differences(rng):
    x = rng.standard_normal((1, 2, 6))
    _, idx = max_pool(x, 2, return_indices=True)
    y = rng.standard_normal((1, 2, 3))
    out, pullback = vjp("max_unpool1d", y, idx, kernel_size=2)
    g = rng.standard_normal(out.shape)
    num = numeric_grad(lambda v: max_unpool1d(v, idx, 2), y, g)
    np.testing.assert_allclose(pullback(g)["x"], num, rtol=1e-6, atol=1e-8)
    dup = np.array([[[2, 0, 2]]])  # duplicates: the finite difference sees only the winner
    out, pullback = vjp("max_unpool1d", y[:, :1], dup, kernel_size=1, output_size=(3,))
    g = rng.standard_normal(out.shape)
    num = numeric_grad(lambda v: max_unpool1d(v, dup, 1, output_size=(3,)), y[:, :1], g)
    np.testing.assert_allclose(pullback(g)["x"], num, rtol=1e-6, atol=1e-8)


def test_errors(rng):
    y = rng.standard_normal((1, 1, 2, 2))
    with pytest.raises(PoolingInputError, match="index 16 is outside the output plane of size 16"):
        max_unpool2d(y, np.full((1, 1, 2, 2), 16), 2, output_size=(4, 4))
    with pytest.raises(PoolingInputError, match="indices must be an integer array"):
        max_unpool2d(y, np.zeros((1, 1, 2, 2)), 2)
    with pytest.raises(PoolingInputError, match=r"indices must have shape \(1, 1, 2, 2\)"):
        max_unpool2d(y, np.zeros((1, 1, 2, 3), dtype=int), 2)
    with pytest.raises(PoolingInputError, match="strictly between"):
        max_unpool(y, np.zeros((1, 1, 2, 2), dtype=int), 2, output_size=(8, 8))
