"""s3_pool: the sampling structure and its statistics, reductions, gradients, errors."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import max_pool, max_pool2d, vjp
from poolkit.ops.s3 import s3_pool, s3_pool1d, s3_pool2d, s3_pool3d

from cases import RESEARCH_CASES, Case
from helpers import chisquare_p, distinct, numeric_grad, traced_peak


def _settings(case: Case) -> dict:
    """The shared cases mapped to S3Pool: their kernel, stride = the case's stride, grid = 2 * stride."""
    stride = case.stride if case.stride is not None else case.kernel_size
    grid = tuple(2 * s for s in stride) if isinstance(stride, tuple) else 2 * stride
    return dict(kernel_size=case.kernel_size, grid_size=grid, stride=stride)


def _to_layout(a, layout):
    return np.moveaxis(a, 1, -1).copy() if layout == "channels_last" else a


def _kept(shape, seed, **kw):
    """Kept rows per axis, read off a kernel-1 call on an input that encodes its own position."""
    nd = len(shape) - 2
    out = []
    for j in range(nd):
        pos = np.broadcast_to(
            np.arange(shape[2 + j], dtype=float).reshape([-1] + [1] * (nd - 1 - j)), shape[2:]
        )
        y = s3_pool(np.broadcast_to(pos, shape).copy(), **{**kw, "kernel_size": 1}, rng=seed)
        rows = np.moveaxis(y[0, 0], j, 0).reshape(y.shape[2 + j], -1)[:, 0]
        out.append(rows.astype(int))
    return out


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_finite_differences(case: Case, layout, training, rng):
    x = _to_layout(distinct(case.shape, rng), layout)  # no ties: max pooling is differentiable
    # a seeded draw is fixed during the check (check_grads keeps `rng=` for itself)
    kw = dict(data_format=layout, training=training, rng=21, **_settings(case))
    y, pullback = vjp("s3_pool", x, **kw)
    g = rng.standard_normal(y.shape)
    numeric = numeric_grad(lambda v: s3_pool(v, **kw), x, g)
    np.testing.assert_allclose(pullback(g)["x"], numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_output_is_max_pool_at_stride_one_then_ordered_rows_from_each_cell(case: Case, layout, rng):
    x = rng.standard_normal(case.shape)
    kw = _settings(case)
    nd = case.nd
    k, g, s = (
        kw[n] if isinstance(kw[n], tuple) else (kw[n],) * nd for n in ("kernel_size", "grid_size", "stride")
    )
    y = s3_pool(_to_layout(x, layout), **kw, rng=5, data_format=layout)
    y = np.moveaxis(y, -1, 1) if layout == "channels_last" else y
    rows = _kept(case.shape, 5, grid_size=g, stride=s)
    m = max_pool(x, k, 1, "same")
    np.testing.assert_array_equal(y, m[(slice(None), slice(None), *np.ix_(*rows))])
    for j in range(nd):
        n = case.shape[2 + j]
        assert len(rows[j]) == math.ceil(n / s[j])
        assert (np.diff(rows[j]) > 0).all()  # distinct, in order
        cells = Counter(rows[j] // g[j])
        for cell in range(math.ceil(n / g[j])):
            size = min(g[j], n - cell * g[j])
            assert cells[cell] == math.ceil(size / s[j])


def test_grid_one_is_max_pool_at_stride_one_and_the_deterministic_subsampling(rng):
    x = rng.standard_normal((2, 3, 7, 6))
    for k in (1, 2, 3):
        m = max_pool2d(x, k, 1, "same")
        np.testing.assert_array_equal(s3_pool2d(x, k, grid_size=1, stride=1, rng=3), m)
        np.testing.assert_array_equal(s3_pool2d(x, k, grid_size=1, stride=1, training=False), m)
        np.testing.assert_array_equal(
            s3_pool2d(x, k, grid_size=4, stride=2, training=False), m[:, :, ::2, ::2]
        )


def test_evaluation_with_kernel_and_stride_two_is_max_pool(rng):
    x = rng.standard_normal((2, 3, 8, 6)) - 3.0  # all negative: the padding must not be 0
    np.testing.assert_array_equal(s3_pool2d(x, 2, grid_size=4, training=False), max_pool2d(x, 2))
    np.testing.assert_array_equal(s3_pool2d(x, 2, grid_size=2, training=False), max_pool2d(x, 2))


def test_row_choices_are_uniform():
    # 1-D, kernel 1: y holds the kept positions. 1500 cells of 4 keep 2 rows: 6 subsets, p = 1/6 each.
    n_cells = 1500
    x = np.arange(4.0 * n_cells)[None, None]
    y = s3_pool1d(x, 1, grid_size=4, stride=2, rng=31)[0, 0].astype(int).reshape(n_cells, 2) % 4
    subsets = Counter(map(tuple, y))
    assert set(subsets) <= {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)}
    assert chisquare_p([subsets[s] for s in sorted(subsets)], [n_cells / 6] * 6) > 1e-3
    # a partial last cell (3 rows, stride 2: keeps 2 of them) across seeds
    picks = Counter(
        tuple(s3_pool1d(np.arange(7.0)[None, None], 1, grid_size=4, rng=s)[0, 0, 2:].astype(int))
        for s in range(600)
    )
    assert set(picks) == {(4, 5), (4, 6), (5, 6)}
    assert chisquare_p(list(picks.values())) > 1e-3


def test_one_draw_per_call_shared_by_samples_and_channels(rng):
    x = np.broadcast_to(np.arange(16.0).reshape(4, 4), (3, 5, 4, 4)).copy()
    y = s3_pool2d(x, 1, grid_size=4, stride=2, rng=2)
    assert (y == y[:1, :1]).all()


def test_seeded_runs_are_reproducible(rng):
    x = rng.standard_normal((2, 3, 16, 16))
    a = s3_pool2d(x, rng=5, grid_size=8)
    np.testing.assert_array_equal(a, s3_pool2d(x, rng=np.random.default_rng(5), grid_size=8))
    assert not np.array_equal(a, s3_pool2d(x, rng=6, grid_size=8))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_channels_last_equals_channels_first(training, rng):
    x = distinct((2, 3, 9, 8), rng)
    kw = dict(kernel_size=3, grid_size=(4, 2), stride=2, training=training, rng=4)
    y, pb = vjp("s3_pool2d", x, **kw)
    yl, pbl = vjp("s3_pool2d", np.moveaxis(x, 1, -1), data_format="channels_last", **kw)
    np.testing.assert_array_equal(np.moveaxis(yl, -1, 1), y)
    g = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(np.moveaxis(pbl(np.moveaxis(g, 1, -1))["x"], -1, 1), pb(g)["x"])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradient_is_conserved(training, rng):
    x = distinct((2, 2, 7, 9), rng)
    y, pullback = vjp("s3_pool2d", x, kernel_size=3, grid_size=6, stride=3, training=training, rng=1)
    g = rng.standard_normal(y.shape)
    np.testing.assert_allclose(
        pullback(g)["x"].sum(axis=(2, 3)), g.sum(axis=(2, 3))
    )  # each output -> one input


def test_degenerate_and_extreme_inputs():
    x = np.array(
        [
            [
                [[3.0, 3.0, 0.0, 0.0], [3.0, 3.0, 0.0, 0.0]],
                [[1e4, -1e4, np.inf, 1.0], [-1e4, 1e4, 2.0, -np.inf]],
                [[np.nan, 1.0, -np.inf, -np.inf], [-2.0, -3.0, -np.inf, -np.inf]],
            ]
        ]
    )
    ref = max_pool2d(x, 2, 1, "same")  # [[3, 3, 0, 0], [3, 3, 0, 0]] | [[1e4, inf, inf, 1], ...] | ...
    with np.errstate(all="raise"):
        for training in (True, False):
            y, pb = vjp("s3_pool2d", x, 2, grid_size=2, training=training, rng=0)
            gx = pb(np.ones_like(y))["x"]
            rows = _kept(x.shape, 0, grid_size=2, stride=2) if training else [[0], [0, 2]]
            np.testing.assert_array_equal(y, ref[(slice(None), slice(None), *np.ix_(*rows))])
            assert y[0, 0, 0, 0] == 3.0 and y[0, 0, 0, 1] == 0.0  # all-equal, all-zero
            assert y[0, 2, 0, 1] == -np.inf  # all -inf (the padding is -inf too)
            assert np.isfinite(gx).all() and gx.sum() == y.size  # NaN and inf winners pass g on
    assert np.isnan(ref[0, 2, 0, 0]) and ref[0, 1, 0, 1] == np.inf
    y16, pb = vjp("s3_pool2d", x.astype(np.float16), 2, rng=0)
    assert y16.dtype == np.float16 and pb(np.ones_like(y16))["x"].dtype == np.float16


def test_float16_empty_unbatched_and_3d(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    np.testing.assert_array_equal(
        s3_pool2d(x.astype(np.float16), rng=1), s3_pool2d(x, rng=1).astype(np.float16)
    )
    y, pb = vjp("s3_pool2d", np.zeros((0, 3, 6, 6)), rng=0)
    assert y.shape == (0, 3, 3, 3) and pb(y)["x"].shape == (0, 3, 6, 6)
    np.testing.assert_array_equal(s3_pool2d(x[0], rng=3), s3_pool2d(x[:1], rng=3)[0])
    assert s3_pool3d(rng.standard_normal((1, 2, 5, 6, 7)), 2, 4, stride=2, rng=0).shape == (1, 2, 3, 3, 4)


def test_errors(rng):
    x = rng.standard_normal((1, 1, 8, 8))
    with pytest.raises(PoolingConfigError, match="grid_size must be a multiple of stride on every axis"):
        s3_pool2d(x, 2, grid_size=3, stride=2)
    with pytest.raises(PoolingConfigError, match="got grid_size=2 and stride=3 on axis 1"):
        s3_pool2d(x, 2, grid_size=(3, 2), stride=3)
    with pytest.raises(PoolingConfigError, match="grid_size must be >= 1"):
        s3_pool2d(x, 2, grid_size=0)
    with pytest.raises(PoolingConfigError, match="stride must be >= 1"):
        s3_pool2d(x, 2, stride=0)
    with pytest.raises(PoolingConfigError, match="kernel_size must be >= 1"):
        s3_pool2d(x, 0)
    with pytest.raises(PoolingConfigError, match=r"grid_size must be an int or a sequence of 2 ints"):
        s3_pool2d(x, 2, grid_size=(2, 2, 2))
    with pytest.raises(PoolingConfigError, match="rng must be None, an int seed or a numpy.random.Generator"):
        s3_pool2d(x, rng=[1, 2])
    with pytest.raises(PoolingConfigError, match="training must be True or False"):
        s3_pool2d(x, training=None)
    with pytest.raises(PoolingInputError, match="s3_pool2d expects a 4-D array"):
        s3_pool2d(x[0, 0])
    with pytest.raises(PoolingInputError, match="grad_output must have shape"):
        vjp("s3_pool2d", x, rng=0)[1](np.ones((1, 1, 8, 8)))


def test_peak_memory_within_three_times_input_plus_output():
    x = np.random.default_rng(0).standard_normal((16, 16, 128, 128), dtype=np.float32)
    kw = dict(kernel_size=3, grid_size=4, stride=2, rng=0)
    g = np.ones((16, 16, 64, 64), np.float32)
    peak, y = traced_peak("s3_pool2d", x, **kw, grad=g)
    io = x.nbytes + y.nbytes
    assert peak <= 3 * io, f"peak {peak / io:.2f} x (input + output)"


@pytest.mark.parametrize("training", [True, False])
def test_inputs_are_never_modified(training):
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6))
    x0 = x.copy()
    y, pullback = vjp("s3_pool2d", x, **dict(kernel_size=1, grid_size=2, stride=1, training=training, rng=0))
    g = np.ones_like(y)
    pullback(g)
    np.testing.assert_array_equal(x, x0)
    assert (g == 1).all()


@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_explicit_samples_reproduce_the_rng_draws(case: Case, layout, rng):
    x = _to_layout(distinct(case.shape, rng), layout)
    kw = dict(_settings(case), data_format=layout)
    rows = _kept(case.shape, 13, **{k: v for k, v in kw.items() if k != "data_format"})
    y, pb = vjp("s3_pool", x, samples=rows, **kw)
    y_rng, pb_rng = vjp("s3_pool", x, rng=13, **kw)
    np.testing.assert_array_equal(y, y_rng)
    g = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(pb(g)["x"], pb_rng(g)["x"])
    # evaluation ignores the samples (but checks them)
    np.testing.assert_array_equal(
        s3_pool(x, samples=rows, training=False, **kw), s3_pool(x, training=False, **kw)
    )


def test_samples_are_checked():
    x = np.ones((1, 1, 8, 6))
    ok = [np.array([0, 3, 4, 6]), np.array([1, 2, 5])]
    assert s3_pool2d(x, samples=ok).shape == (1, 1, 4, 3)
    with pytest.raises(PoolingInputError, match="samples must be a sequence of 2 1-D integer arrays"):
        s3_pool2d(x, samples=ok[:1])
    with pytest.raises(
        PoolingInputError, match=r"samples\[1\] must be 3 integer positions \(ceil\(6 / stride\)\)"
    ):
        s3_pool2d(x, samples=[ok[0], np.array([1, 2])])
    with pytest.raises(PoolingInputError, match=r"samples\[0\] must be 4 integer positions"):
        s3_pool2d(x, samples=[ok[0] + 0.0, ok[1]])
    with pytest.raises(
        PoolingInputError, match=r"samples\[0\] must be strictly increasing positions in \[0, 8\)"
    ):
        s3_pool2d(x, samples=[np.array([0, 3, 3, 6]), ok[1]], training=False)
    with pytest.raises(
        PoolingInputError, match=r"samples\[1\] must be strictly increasing positions in \[0, 6\)"
    ):
        s3_pool2d(x, samples=[ok[0], np.array([1, 2, 6])])
