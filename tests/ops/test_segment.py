"""segment_pool: set pooling by segment id (graph readout building block)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import segment_pool, vjp

from helpers import check_grads

MODES = ["sum", "mean", "max", "softmax", "power_mean"]


def _loop(x, batch, n, mode, t=1.0, p=1.0, eps=1e-6):
    out = np.zeros((n, *x.shape[1:]))
    for s in range(n):
        rows = x[batch == s]
        if len(rows) == 0:
            continue
        if mode == "sum":
            out[s] = rows.sum(0)
        elif mode == "mean":
            out[s] = rows.mean(0)
        elif mode == "max":
            out[s] = rows.max(0)
        elif mode == "softmax":
            w = np.exp(t * rows - (t * rows).max(0))
            out[s] = (w / w.sum(0) * rows).sum(0)
        else:
            out[s] = (np.maximum(rows, eps) ** p).mean(0) ** (1 / p)
    return out


@pytest.mark.parametrize("mode", MODES)
def test_matches_loop_reference_unsorted_with_empty_segments(mode, rng):
    x = rng.uniform(0.1, 2.0, (13, 4))
    batch = rng.permutation(np.array([0, 0, 0, 2, 2, 2, 2, 3, 3, 5, 5, 5, 5]))
    kw = {"t": 0.7} if mode == "softmax" else {"p": 2.5} if mode == "power_mean" else {}
    y = segment_pool(x, batch, 7, mode, **kw)
    assert y.shape == (7, 4)
    np.testing.assert_allclose(y, _loop(x, batch, 7, mode, **kw), rtol=1e-12)
    assert not y[[1, 4, 6]].any()  # empty segments, including trailing ones, are rows of zeros


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_matches_torch_scatter_reduce(mode, rng):
    x = rng.standard_normal((20, 3))
    batch = rng.integers(0, 5, 20)
    reduce = {"sum": "sum", "mean": "mean", "max": "amax"}[mode]
    idx = torch.tensor(batch)[:, None].expand(-1, 3)
    ref = torch.zeros(5, 3, dtype=torch.float64).scatter_reduce(
        0, idx, torch.tensor(x), reduce, include_self=False
    )
    np.testing.assert_allclose(segment_pool(x, batch, 5, mode), ref.numpy(), rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_gradients(mode, rng):
    x = rng.uniform(0.2, 2.0, (9, 3)) + np.arange(27).reshape(9, 3) * 1e-3  # no ties
    batch = np.array([2, 0, 2, 1, 0, 2, 1, 2, 0])
    arrays = {"x": x, "batch": batch}
    if mode == "softmax":
        check_grads(
            "segment_pool", arrays, rng, wrt=("x",), num_segments=4, mode=mode, t=np.array([0.5, 1.0, 2.0])
        )
        t = np.array([0.5, 1.0, 2.0])
        _, pb = vjp("segment_pool", x, batch, num_segments=4, mode=mode, t=t)
        g = rng.standard_normal((4, 3))
        num = np.array([_fd_param(lambda v: segment_pool(x, batch, 4, mode, t=v), t, g, i) for i in range(3)])
        np.testing.assert_allclose(pb(g)["t"], num, rtol=1e-6)
    elif mode == "power_mean":
        check_grads("segment_pool", arrays, rng, wrt=("x",), num_segments=4, mode=mode, p=3.0)
        _, pb = vjp("segment_pool", x, batch, num_segments=4, mode=mode, p=3.0)
        g = rng.standard_normal((4, 3))
        num = _fd_param(lambda v: segment_pool(x, batch, 4, mode, p=float(v)), np.array(3.0), g, None)
        np.testing.assert_allclose(pb(g)["p"], num, rtol=1e-6)
    else:
        check_grads("segment_pool", arrays, rng, wrt=("x",), num_segments=4, mode=mode)


def _fd_param(f, v, g, i, eps=1e-6):
    v = np.array(v, dtype=float)
    vp, vm = v.copy(), v.copy()
    if i is None:
        vp, vm = v + eps, v - eps
    else:
        vp[i] += eps
        vm[i] -= eps
    return float(((f(vp) - f(vm)) * g).sum() / (2 * eps))


def test_max_ties_and_nan():
    x = np.array([[1.0], [3.0], [3.0], [np.nan], [2.0], [np.nan]])
    batch = np.array([0, 0, 0, 1, 1, 1])
    y, pb = vjp("segment_pool", x, batch, mode="max")
    assert y[0, 0] == 3.0 and np.isnan(y[1, 0])
    np.testing.assert_array_equal(pb(np.ones((2, 1)))["x"][:, 0], [0, 1, 0, 0, 0, 1])


def test_errors():
    x = np.zeros((4, 2))
    with pytest.raises(PoolingInputError, match="num_segments=2 but batch holds segment id 3"):
        segment_pool(x, [0, 1, 3, 3], 2)
    with pytest.raises(
        PoolingInputError, match="batch must be a 1-D integer array with one segment id per row"
    ):
        segment_pool(x, [0, 1], 2)
    with pytest.raises(PoolingInputError, match="segment ids must be >= 0"):
        segment_pool(x, [0, -1, 0, 0])
    with pytest.raises(PoolingConfigError, match="mode must be one of"):
        segment_pool(x, [0, 0, 0, 0], mode="median")
    with pytest.raises(PoolingInputError, match=r"p must be a scalar or have the feature shape \(2,\)"):
        segment_pool(x, [0, 0, 0, 0], mode="power_mean", p=np.ones(3))
    with pytest.raises(PoolingConfigError, match="p must be > 0"):
        segment_pool(x, [0, 0, 0, 0], mode="power_mean", p=0.0)


def test_empty_input():
    y = segment_pool(np.zeros((0, 3)), np.zeros(0, dtype=int), 2, "mean")
    assert y.shape == (2, 3) and not y.any()
