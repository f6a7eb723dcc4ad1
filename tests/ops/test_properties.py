"""Hypothesis: random shapes and settings against PyTorch, and invariants."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

from poolkit.errors import PoolingError
from poolkit.geometry import window_spec
from poolkit.ops import vjp

TMAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
TAVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@st.composite
def window_configs(draw, allow_dilation=True):
    nd = draw(st.integers(1, 3))
    size = tuple(draw(st.integers(1, 9 if nd < 3 else 6)) for _ in range(nd))
    k = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    s = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    p = tuple(draw(st.integers(0, kk // 2)) for kk in k)
    d = tuple(draw(st.integers(1, 3)) if allow_dilation else 1 for _ in range(nd))
    ceil = draw(st.booleans())
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    ties = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return nd, (n, c, *size), dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil), ties, seed


def _input(shape, ties, seed):
    rng = np.random.default_rng(seed)
    return (rng.integers(-2, 3, size=shape).astype(float) if ties else rng.standard_normal(shape)), rng


@given(window_configs())
def test_max_pool_matches_torch(cfg):
    nd, shape, kw, ties, seed = cfg
    try:
        window_spec(shape[2:], **kw)
    except PoolingError:
        assume(False)
    x, rng = _input(shape, ties, seed)
    (y, idx), pullback = vjp(f"max_pool{nd}d", x, return_indices=True, **kw)
    xt = torch.tensor(x, requires_grad=True)
    ty, ti = TMAX[nd](xt, return_indices=True, **kw)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(idx, ti.numpy())  # also PyTorch's index for a window without a valid tap
    if np.isfinite(y).all():  # PyTorch's backward for such windows writes outside the input
        g = rng.standard_normal(y.shape)
        ty.backward(torch.tensor(g))
        np.testing.assert_allclose(pullback(g)["x"], xt.grad.numpy(), rtol=1e-12, atol=1e-12)


@given(window_configs(allow_dilation=False), st.booleans())
def test_avg_pool_matches_torch(cfg, include):
    nd, shape, kw, _, seed = cfg
    kw.pop("dilation")
    try:
        window_spec(shape[2:], **kw)
    except PoolingError:
        assume(False)
    if nd == 3:  # PyTorch's avg_pool3d also wants input >= kernel on every axis
        assume(all(n >= k for n, k in zip(shape[2:], kw["kernel_size"])))
    x, rng = _input(shape, False, seed)
    y, pullback = vjp(f"avg_pool{nd}d", x, count_include_pad=include, **kw)
    xt = torch.tensor(x, requires_grad=True)
    ty = TAVG[nd](xt, count_include_pad=include, **kw)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-14)
    g = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(pullback(g)["x"], xt.grad.numpy(), rtol=1e-12, atol=1e-14)


@given(st.integers(1, 3), st.data())
def test_adaptive_matches_torch(nd, data):
    size = tuple(data.draw(st.integers(1, 10)) for _ in range(nd))
    out = tuple(data.draw(st.integers(1, 12)) for _ in range(nd))
    seed = data.draw(st.integers(0, 2**31 - 1))
    ties = data.draw(st.booleans())
    x, rng = _input((2, 2, *size), ties, seed)
    tmax = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}[nd]
    tavg = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[nd]
    (y, idx), pull_max = vjp(f"adaptive_max_pool{nd}d", x, output_size=out, return_indices=True)
    xt = torch.tensor(x, requires_grad=True)
    ty, ti = tmax(xt, out, return_indices=True)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(idx, ti.numpy())
    g = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(pull_max(g)["x"], xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    ya, pull_avg = vjp(f"adaptive_avg_pool{nd}d", x, output_size=out)
    xt = torch.tensor(x, requires_grad=True)
    ta = tavg(xt, out)
    np.testing.assert_allclose(ya, ta.detach().numpy(), rtol=1e-12, atol=1e-14)
    ta.backward(torch.tensor(g))
    np.testing.assert_allclose(pull_avg(g)["x"], xt.grad.numpy(), rtol=1e-12, atol=1e-14)


@given(window_configs())
def test_channels_last_equals_channels_first(cfg):
    nd, shape, kw, ties, seed = cfg
    try:
        window_spec(shape[2:], **kw)
    except PoolingError:
        assume(False)
    x, _ = _input(shape, ties, seed)
    xl = np.moveaxis(x, 1, -1).copy()
    y = vjp("max_pool", x, **kw)[0]
    yl = vjp("max_pool", xl, data_format="channels_last", **kw)[0]
    np.testing.assert_array_equal(np.moveaxis(yl, -1, 1), y)  # max is exact in any order
    y = vjp("avg_pool", x, **kw)[0]
    yl = vjp("avg_pool", xl, data_format="channels_last", **kw)[0]
    np.testing.assert_allclose(np.moveaxis(yl, -1, 1), y, rtol=1e-12, atol=1e-15)  # sums: another order
