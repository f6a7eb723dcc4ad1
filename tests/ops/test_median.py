"""median_pool: torch unfold+median parity, a slow loop with padding and ties, NaN rule, chunking."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import poolkit.ops.median as median_mod
from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.geometry import window_spec
from poolkit.ops import vjp
from poolkit.ops.median import median_pool, median_pool1d, median_pool2d, median_pool3d

from cases import RESEARCH_CASES, Case
from helpers import check_grads, distinct, torch_vjp, traced_peak


def _loop(x: np.ndarray, **window) -> tuple[np.ndarray, np.ndarray]:
    """Slow reference: lower median of the taps inside the input; winner = first tap holding it."""
    nd = x.ndim - 2
    spec = window_spec(x.shape[2:], **window)
    y = np.zeros((*x.shape[:2], *spec.output_size))
    win = np.zeros(y.shape, dtype=np.int64)  # flat input index of the median tap
    for n, c in itertools.product(*map(range, x.shape[:2])):
        for o in itertools.product(*map(range, spec.output_size)):
            taps = []
            for k in itertools.product(*map(range, spec.kernel_size)):
                pos = tuple(ax.starts[o[j]] + k[j] for j, ax in enumerate(spec.axes))
                if all(0 <= p < x.shape[2 + j] for j, p in enumerate(pos)):
                    taps.append((x[(n, c, *pos)], np.ravel_multi_index(pos, x.shape[2:])))
            vals = np.array([v for v, _ in taps])
            if np.isnan(vals).any():
                first = int(np.flatnonzero(np.isnan(vals))[0])
                m = np.nan
            else:
                m = np.sort(vals)[(len(vals) - 1) // 2]
                first = int(np.flatnonzero(vals == m)[0])
            y[(n, c, *o)] = m
            win[(n, c, *o)] = taps[first][1]
    assert nd == len(spec.axes)
    return y, win


def _loop_grad(x, g, win):
    gx = np.zeros(x.shape)
    flat = gx.reshape(*x.shape[:2], -1)
    for n, c in itertools.product(*map(range, x.shape[:2])):
        np.add.at(flat[n, c], win[n, c].reshape(-1), g[n, c].reshape(-1))
    return gx


@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_matches_slow_loop_with_padding_ceil_and_ties(case: Case, layout, kind, rng):
    x = Case(case.shape, case.kernel_size, kind=kind).input(rng)
    y, pullback = vjp("median_pool", x, **case.window())
    ref, win = _loop(x, **case.window())
    np.testing.assert_array_equal(y, ref)
    g = rng.standard_normal(y.shape)
    np.testing.assert_allclose(pullback(g)["x"], _loop_grad(x, g, win), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_finite_differences(case: Case, layout, rng):
    x = distinct(case.shape, rng)  # medians away from ties: the gradient is defined
    if layout == "channels_last":
        x = np.moveaxis(x, 1, -1).copy()
    check_grads("median_pool", {"x": x}, rng, data_format=layout, **case.window())


def _torch_median(xt, k, s):
    nd = xt.dim() - 2
    u = xt
    for j in range(nd):
        u = u.unfold(2 + j, k[j], s[j])
    return u.reshape(*u.shape[: 2 + nd], -1).median(-1).values


@pytest.mark.parametrize(
    "shape,k,s",
    [
        ((2, 3, 9, 8), (3, 3), (2, 2)),
        ((2, 2, 8, 8), (2, 2), (2, 2)),  # even count: the lower middle value
        ((1, 2, 7, 9), (3, 4), (1, 2)),
        ((2, 3, 11), (4,), (3,)),
        ((1, 2, 5, 6, 5), (3, 2, 3), (2, 2, 1)),
    ],
)
def test_matches_torch_unfold_median(shape, k, s, rng):
    x = distinct(shape, rng)
    y, pullback = vjp("median_pool", x, kernel_size=k, stride=s)
    g = rng.standard_normal(y.shape)
    ty, tg, _ = torch_vjp(_torch_median, x, g, k, s)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_allclose(pullback(g)["x"], tg, rtol=1e-14, atol=1e-15)  # overlaps: summation order


def test_nan_windows_give_nan_and_pass_the_gradient_to_their_first_nan(rng):
    x = rng.standard_normal((1, 2, 6, 6))
    x[0, 0, 1, 1] = x[0, 0, 0, 1] = np.nan
    x[0, 1, 5, 5] = np.nan
    with np.errstate(all="raise"):
        y, pullback = vjp("median_pool2d", x, kernel_size=3, stride=3)
        gx = pullback(np.ones_like(y))["x"]
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y[0, 1, 1, 1]) and np.isfinite(y).sum() == 6
    assert gx[0, 0, 0, 1] == 1 and gx[0, 0, 1, 1] == 0 and gx[0, 1, 5, 5] == 1
    # torch.median: NaN, at the first NaN
    t = _torch_median(torch.tensor(x), (3, 3), (3, 3))
    np.testing.assert_array_equal(y, t.numpy())
    ref, win = _loop(x, kernel_size=3, stride=3)
    np.testing.assert_array_equal(gx, _loop_grad(x, np.ones_like(y), win))


def test_infinities_are_ordinary_values():
    x = np.array([[[np.inf, -np.inf, 1.0, np.inf, np.inf, -np.inf]]])
    with np.errstate(all="raise"):
        np.testing.assert_array_equal(median_pool1d(x, 3), [[[1.0, np.inf]]])
        np.testing.assert_array_equal(median_pool1d(x, 2), [[[-np.inf, 1.0, -np.inf]]])


def test_kernel_one_is_the_identity_subsampled(rng):
    x = rng.standard_normal((2, 3, 7, 8))
    np.testing.assert_array_equal(median_pool2d(x, 1), x)
    np.testing.assert_array_equal(median_pool2d(x, 1, 2), x[..., ::2, ::2])
    x3 = rng.standard_normal((1, 2, 5, 4, 3))
    np.testing.assert_array_equal(median_pool3d(x3, 1, (2, 1, 3)), x3[..., ::2, :, ::3])


def test_degenerate_inputs_raise_no_warning(rng):
    with np.errstate(all="raise"):
        c = np.full((1, 2, 7, 7), -4.0)
        np.testing.assert_array_equal(median_pool2d(c, 3, 2, 1, True), np.full((1, 2, 4, 4), -4.0))
        y, pullback = vjp("median_pool2d", c, kernel_size=2)
        gx = pullback(np.ones_like(y))["x"]
        assert gx.sum() == y.size and (gx[0, :, :6:2, :6:2] == 1).all()  # all equal: the first tap
        big = rng.choice([-1e4, 1e4], size=(2, 3, 8, 8)).astype(np.float32)
        np.testing.assert_array_equal(
            median_pool2d(big, 3, 1, 1), _loop(big.astype(np.float64), kernel_size=3, stride=1, padding=1)[0]
        )


def test_chunks_give_the_same_result(rng, monkeypatch):
    x = rng.standard_normal((3, 4, 13, 11))
    for kw in (dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=(4, 3), stride=2, ceil_mode=True)):
        y, pb = vjp("median_pool2d", x, **kw)
        g = rng.standard_normal(y.shape)
        gx = pb(g)["x"]
        monkeypatch.setattr(median_mod, "_STACK_BYTES", 64)  # one output row per chunk
        y2, pb2 = vjp("median_pool2d", x, **kw)
        np.testing.assert_array_equal(y2, y)
        np.testing.assert_array_equal(pb2(g)["x"], gx)
        monkeypatch.undo()


def test_layouts_dtypes_and_empty_batch(rng):
    x = rng.standard_normal((2, 3, 9, 8))
    yl = median_pool(np.moveaxis(x, 1, -1), 3, 2, 1, data_format="channels_last")
    np.testing.assert_array_equal(np.moveaxis(yl, -1, 1), median_pool(x, 3, 2, 1))
    y16, pb = vjp("median_pool2d", x.astype(np.float16), kernel_size=3, stride=2, padding=1)
    assert y16.dtype == np.float16 and pb(np.ones_like(y16))["x"].dtype == np.float16
    np.testing.assert_array_equal(y16, median_pool2d(x.astype(np.float16), 3, 2, 1).astype(np.float16))
    np.testing.assert_array_equal(y16, median_pool2d(x, 3, 2, 1).astype(np.float16))
    e, pb = vjp("median_pool2d", np.zeros((0, 3, 9, 8)), kernel_size=3, padding=1)
    assert e.shape == (0, 3, 3, 3) and pb(e)["x"].shape == (0, 3, 9, 8)
    np.testing.assert_array_equal(median_pool1d(x[0, :, 0], 3), median_pool1d(x[:1, :, 0], 3)[0])


def test_errors():
    x = np.zeros((1, 1, 6, 6))
    with pytest.raises(PoolingConfigError, match="kernel_size must be >= 1, got 0"):
        median_pool2d(x, 0)
    with pytest.raises(PoolingConfigError, match="padding=2 on axis 0 is more than half of kernel_size=3"):
        median_pool2d(x, 3, padding=2)
    with pytest.raises(PoolingInputError, match="window does not fit the input"):
        median_pool2d(x, 7)
    with pytest.raises(PoolingInputError, match="median_pool2d expects a 4-D array"):
        median_pool2d(np.zeros((6, 6)), 2)


def test_peak_memory_within_three_times_input_plus_output():
    kw = dict(kernel_size=3, stride=2, padding=1)
    x = np.random.default_rng(0).standard_normal((16, 16, 128, 128), dtype=np.float32)
    y = median_pool2d(x, **kw)
    g = np.ones_like(y)
    io = x.nbytes + y.nbytes
    peak, y = traced_peak("median_pool2d", x, **kw, grad=g)
    # stacking every tap of the input (sliding_window_view) would be 9x the input here
    assert peak <= 3 * io, f"peak {peak / io:.2f} x (input + output)"
