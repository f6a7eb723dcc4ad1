"""roi_pool and roi_align: torchvision parity (forward and backward), its rules pinned, gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.ops as tvo

from poolkit import registry
from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import vjp
from poolkit.ops.roi import roi_align, roi_align2d, roi_pool

from helpers import check_grads, distinct

FLT_MAX = float(np.finfo(np.float32).max)


def mixed_boxes(rng, n_images, k, h, w, scale=1.0):
    """``(K, 5)`` boxes in image coordinates: ordinary, tiny, huge, outside, degenerate, reversed, halves."""
    hh, ww = h / scale, w / scale
    x1 = rng.uniform(-0.3 * ww, 1.1 * ww, k)
    y1 = rng.uniform(-0.3 * hh, 1.1 * hh, k)
    size = rng.choice([0.1, 0.5, 1.0, 2.5], (k, 1)) * rng.uniform(0, 1, (k, 2)) * [ww, hh]
    b = np.stack([x1, y1, x1 + size[:, 0], y1 + size[:, 1]], axis=1)
    special = np.array(
        [
            [2.0, 1.0, 2.0, 4.0],  # zero width
            [1.0, 3.0, 5.0, 3.0],  # zero height
            [4.0, 1.0, 1.5, 3.5],  # reversed x
            [1.0, 4.0, 3.5, 0.5],  # reversed y
            [5.0, 4.0, 2.0, 1.0],  # reversed both
            [ww + 3, hh + 2, ww + 9, hh + 6],  # wholly outside (after the map)
            [-9.0, -8.0, -3.0, -2.5],  # wholly outside (before the map)
            [-3 * ww, -2 * hh, 4 * ww, 3 * hh],  # huge
            [1.3, 2.2, 1.5, 2.3],  # tiny
            [0.5, 1.5, 2.5, 3.5],  # halves: rounding direction matters
            [-0.5, -1.5, 4.5, 2.5],
            [0.0, 0.0, ww - 1, hh - 1],  # the whole map
        ]
    )
    special[:10] /= scale
    b[: len(special)] = special
    return np.concatenate([rng.integers(0, n_images, (k, 1)).astype(float), b], axis=1)


def as_list(b, n_images):
    return [b[b[:, 0] == i, 1:] for i in range(n_images)]


def tv_boxes(boxes):
    return [torch.tensor(b) for b in boxes] if isinstance(boxes, list) else torch.tensor(boxes)


def tv_run(fn, x, boxes, g, **kw):
    xt = torch.tensor(x, requires_grad=True)
    y = fn(xt, tv_boxes(boxes), **kw)
    y.backward(torch.tensor(g))
    return y.detach().numpy(), xt.grad.numpy()


def align_runs_in_torchvision(b, scale, out, aligned, sampling_ratio):
    """torchvision's CPU roi_align allocates gh*gw*oh*ow samples: a negative grid product raises."""
    if not aligned or sampling_ratio > 0:
        return np.ones(len(b), bool)
    gw = np.ceil((b[:, 3] - b[:, 1]) * scale / out[1])
    gh = np.ceil((b[:, 4] - b[:, 2]) * scale / out[0])
    return gw * gh >= 0


@pytest.mark.parametrize("fmt", ["array", "list"])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_roi_pool_matches_torchvision(fmt, scale, ties, rng):
    n, c, h, w = 2, 3, 9, 11
    x = rng.integers(-2, 3, (n, c, h, w)).astype(float) if ties else rng.standard_normal((n, c, h, w))
    b = mixed_boxes(rng, n, 60, h, w, scale)
    boxes = as_list(b, n) if fmt == "list" else b
    g = rng.standard_normal((len(b), c, 3, 4))
    with np.errstate(all="raise"):  # no NumPy warning for any of these boxes
        y, pullback = vjp("roi_pool", x, boxes, output_size=(3, 4), spatial_scale=scale)
        gx = pullback(g)["x"]
    ty, tg = tv_run(tvo.roi_pool, x, boxes, g, output_size=(3, 4), spatial_scale=scale)
    np.testing.assert_array_equal(y, ty)  # bitwise
    np.testing.assert_allclose(gx, tg, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_roi_align_matches_torchvision(aligned, sampling_ratio, scale, rng):
    n, c, h, w = 2, 3, 8, 10
    x = rng.standard_normal((n, c, h, w))
    b = mixed_boxes(rng, n, 50, h, w, scale)
    b = b[align_runs_in_torchvision(b, scale, (3, 2), aligned, sampling_ratio)]
    boxes = as_list(b, n) if sampling_ratio % 2 else b  # both formats across the grid
    kw = dict(output_size=(3, 2), spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)
    g = rng.standard_normal((len(b), c, 3, 2))
    with np.errstate(all="raise"):
        y, pullback = vjp("roi_align", x, boxes, **kw)
        gx = pullback(g)["x"]
    ty, tg = tv_run(tvo.roi_align, x, boxes, g, **kw)
    np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, tg, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_roi_align_boxes_far_larger_than_the_map(dtype, tol, rng):
    # Adaptive grids of thousands of points per bin: only those that can land on the map are generated.
    x = rng.standard_normal((1, 2, 6, 7)).astype(dtype)
    b = np.array(
        [[0, -1500.3, 1.2, 2100.7, 4.9], [0, 0.7, -2300.1, 5.5, 1700.2], [0, -31.0, -29.0, 40.0, 37.0]]
    )
    for aligned in (False, True):
        y, pullback = vjp("roi_align", x, b.astype(dtype), output_size=(2, 1), aligned=aligned)
        g = rng.standard_normal(y.shape).astype(dtype)
        ty, tg = tv_run(tvo.roi_align, x, b.astype(dtype), g, output_size=(2, 1), aligned=aligned)
        np.testing.assert_allclose(y, ty, rtol=tol, atol=tol)
        np.testing.assert_allclose(pullback(g)["x"], tg, rtol=tol, atol=tol)


@pytest.mark.parametrize("op", ["roi_pool", "roi_align"])
def test_float32_matches_torchvision(op, rng):
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    b = mixed_boxes(rng, 2, 40, 9, 8, 0.5).astype(np.float32)
    fn = {"roi_pool": tvo.roi_pool, "roi_align": tvo.roi_align}[op]
    y, pullback = vjp(op, x, b, output_size=2, spatial_scale=0.5)
    g = rng.standard_normal(y.shape).astype(np.float32)
    ty, tg = tv_run(fn, x, b, g, output_size=2, spatial_scale=0.5)
    assert y.dtype == np.float32 and pullback(g)["x"].dtype == np.float32
    np.testing.assert_allclose(y, ty, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pullback(g)["x"], tg, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["roi_pool", "roi_align"])
def test_channels_last_equals_channels_first(op, rng):
    x = rng.standard_normal((2, 5, 7, 9))
    b = mixed_boxes(rng, 2, 20, 7, 9)
    y, pb = vjp(op, x, b, output_size=(2, 3))
    yl, pbl = vjp(op, np.moveaxis(x, 1, -1).copy(), b, output_size=(2, 3), data_format="channels_last")
    assert yl.shape == (20, 2, 3, 5)
    np.testing.assert_array_equal(np.moveaxis(yl, -1, 1), y)
    g = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(np.moveaxis(pbl(np.moveaxis(g, 1, -1))["x"], -1, 1), pb(g)["x"])


def test_gradients_by_finite_differences(rng):
    x = distinct((2, 2, 5, 6), rng)
    # Sample points at quarter-pixel offsets (off the integer kinks); bins of 1-3 pixels, some shared.
    b = np.array([[0, 0.3, 0.6, 4.1, 3.9], [1, -1.4, 1.2, 2.3, 5.6], [1, 2.6, 0.1, 6.4, 2.2]])
    check_grads("roi_pool", {"x": x, "boxes": b}, rng, wrt=("x",), output_size=(2, 3))
    for aligned, sr in [(False, -1), (True, 2), (True, 0)]:
        check_grads(
            "roi_align",
            {"x": x, "boxes": b},
            rng,
            wrt=("x",),
            output_size=(3, 2),
            sampling_ratio=sr,
            aligned=aligned,
        )


def test_roi_pool_rounds_half_away_from_zero():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    # x1 = y1 = 2.5 -> C round 3 (NumPy's round gives 2); the box is one pixel.
    assert roi_pool(x, np.array([[0, 2.5, 2.5, 2.5, 2.5]]), 1)[0, 0, 0, 0] == 15.0
    assert roi_pool(x, np.array([[0, 0.5, 1.5, 0.5, 1.5]]), 1)[0, 0, 0, 0] == 9.0  # (1, 2), not (0, 2)
    # Negative halves go to -1: with spatial_scale the product is what is rounded.
    y = roi_pool(x, np.array([[0, -1.0, -1.0, 1.0, 1.0]]), 2, spatial_scale=0.5)  # [-0.5, 0.5] -> [-1, 1]
    np.testing.assert_array_equal(y[0, 0], [[0.0, 1.0], [4.0, 5.0]])


def test_roi_pool_nan_inf_and_empty_bins():
    x = np.array([[[[np.nan, 1.0, -np.inf], [2.0, np.nan, -FLT_MAX]]]])
    b = np.array([[0, 0.0, 0.0, 2.0, 1.0], [0, 5.0, 5.0, 7.0, 7.0]])  # second box is off the map
    y, pullback = vjp("roi_pool", x, b, output_size=(1, 3))
    # NaN never wins; a bin of values <= -FLT_MAX gives -FLT_MAX (also in float64) and no gradient
    # (the running maximum starts at -FLT_MAX and needs a strictly larger value); empty bins are 0.
    np.testing.assert_array_equal(y[0, 0, 0], [2.0, 1.0, -FLT_MAX])
    np.testing.assert_array_equal(y[1], 0)
    gx = pullback(np.ones_like(y))["x"]
    np.testing.assert_array_equal(gx[0, 0], [[0, 1, 0], [1, 0, 0]])
    ty, tg = tv_run(tvo.roi_pool, x, b, np.ones_like(y), output_size=(1, 3))
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(gx, tg)


def test_roi_pool_ties_go_to_the_first_pixel_in_row_major_order():
    x = np.array([[[[1.0, 5.0, 5.0], [5.0, 0.0, 5.0]]]])
    y, pullback = vjp("roi_pool", x, np.array([[0, 0.0, 0.0, 2.0, 1.0]]), output_size=1)
    assert y.item() == 5.0
    np.testing.assert_array_equal(pullback(np.ones_like(y))["x"][0, 0], [[0, 1, 0], [0, 0, 0]])


def test_roi_align_rules_pinned():
    x = np.arange(20.0).reshape(1, 1, 4, 5)  # x[i, j] = 5 i + j
    # Not aligned: a point box is forced to 1x1 pixel; one sample at (y, x) = (1.5, 2.5).
    assert roi_align(x, np.array([[0, 2.0, 1.0, 2.0, 1.0]]), 1).item() == 5 * 1.5 + 2.5
    # Aligned: zero size stays zero, the adaptive grid is ceil(0) = 0 points: 0 / max(0, 1) = 0.
    assert roi_align(x, np.array([[0, 2.0, 1.0, 2.0, 1.0]]), 1, aligned=True).item() == 0.0
    # y in (-1, 0] clamps to row 0; y beyond H - 1 (but <= H) reads row H - 1 only; y > H contributes 0.
    b = np.array([[0, 0.0, -0.8, 1.0, -0.6], [0, 0.0, 3.4, 1.0, 3.6], [0, 0.0, 4.2, 1.0, 4.4]])
    y = roi_align(x, b, 1, sampling_ratio=1)
    np.testing.assert_allclose(y[:, 0, 0, 0], [0.5, 15.5, 0.0], rtol=0, atol=1e-13)
    # The adaptive grid for sampling_ratio=0 is the same as for -1.
    b = np.array([[0, 0.2, 0.3, 3.9, 3.1]])
    np.testing.assert_array_equal(roi_align(x, b, 2, sampling_ratio=0), roi_align(x, b, 2, sampling_ratio=-1))


def test_roi_align_reads_no_pixel_it_gives_zero_weight():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 0, 0] = np.inf
    b = np.array([[0, 10.0, 10.0, 12.0, 12.0], [0, 1.0, 1.0, 3.0, 3.0]])
    y = roi_align(x, b, 2)
    np.testing.assert_array_equal(y, 0)  # torchvision's CPU kernel gives NaN for the first box (0 * inf)
    assert np.isnan(tvo.roi_align(torch.tensor(x), torch.tensor(b), 2).numpy()[0]).all()


def test_aligned_negative_grid_gives_zeros_where_torchvision_raises():
    x = np.ones((1, 1, 6, 6))
    b = np.array([[0, 5.0, 1.0, 1.0, 5.0]])  # reversed x only: grid (ceil(4/2), ceil(-4/2)) = (2, -2)
    y, pullback = vjp("roi_align", x, b, output_size=2, aligned=True)
    np.testing.assert_array_equal(y, 0)
    np.testing.assert_array_equal(pullback(np.ones_like(y))["x"], 0)
    with pytest.raises((ValueError, RuntimeError)):
        tvo.roi_align(torch.tensor(x), torch.tensor(b), 2, aligned=True)
    # A fixed grid samples the reversed box backwards, as torchvision.
    ty = tvo.roi_align(torch.tensor(x * np.arange(6.0)), torch.tensor(b), 2, sampling_ratio=2, aligned=True)
    np.testing.assert_allclose(
        roi_align(x * np.arange(6.0), b, 2, sampling_ratio=2, aligned=True), ty.numpy()
    )


def test_list_format_equals_array_format(rng):
    x = rng.standard_normal((3, 2, 6, 6))
    b = mixed_boxes(rng, 3, 15, 6, 6)
    b = b[np.argsort(b[:, 0], kind="stable")]
    for fn in (roi_pool, roi_align):
        np.testing.assert_array_equal(fn(x, as_list(b, 3), 2), fn(x, b, 2))
    # Fewer per-image arrays than images is allowed (the last images get no box), as in torchvision.
    assert roi_align(x, [b[b[:, 0] == 0, 1:]], 2).shape == ((b[:, 0] == 0).sum(), 2, 2, 2)


def test_float16_and_empty_boxes(rng):
    x = rng.standard_normal((1, 2, 5, 5))
    b = np.array([[0, 0.5, 0.5, 3.5, 4.0]])
    for fn in (roi_pool, roi_align):
        y16 = fn(x.astype(np.float16), b, 2)
        assert y16.dtype == np.float16
        np.testing.assert_allclose(y16, fn(x, b, 2), atol=2e-3)
        y, pullback = vjp(fn.__name__, x, np.zeros((0, 5)), output_size=(2, 3))
        assert y.shape == (0, 2, 2, 3)
        np.testing.assert_array_equal(pullback(y)["x"], np.zeros_like(x))
        assert fn(x, [], 2).shape == (0, 2, 2, 2)


def test_registered_with_alias_and_example(rng):
    for name in ("roi_pool", "roi_align"):
        info = registry.get(name)
        assert info.family == "structured" and info.ndims == (2,) and info.differentiable == ("x",)
        assert registry.resolve(f"{name}2d") == (info, 2)
        x = rng.standard_normal((2, 3, 8, 8))
        arrays, settings = info.example(x)
        y, pullback = vjp(name, *arrays, **settings)
        assert y.shape == (3, 3, 2, 3) and np.isfinite(pullback(np.ones_like(y))["x"]).all()
    b = np.array([[0, 0.5, 0.5, 3.0, 3.0]])
    x = rng.standard_normal((1, 2, 4, 4))
    np.testing.assert_array_equal(roi_align2d(x, b, 2), roi_align(x, b, 2))


X = np.zeros((2, 3, 5, 5))
B = np.array([[0, 0.0, 0.0, 2.0, 2.0]])


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: roi_align(X, np.zeros((3, 4)), 2), PoolingInputError, r"\(K, 5\) array"),
        (
            lambda: roi_align(X, [np.zeros((2, 5))], 2),
            PoolingInputError,
            r"boxes\[0\] must have shape \(L, 4\)",
        ),
        (lambda: roi_pool(X, [np.zeros((1, 4))] * 3, 2), PoolingInputError, "list of 3 per-image arrays"),
        (lambda: roi_align(X, np.array([[2, 0, 0, 1, 1.0]]), 2), PoolingInputError, r"integer in \[0, 2\)"),
        (lambda: roi_pool(X, np.array([[0.5, 0, 0, 1, 1.0]]), 2), PoolingInputError, "batch index"),
        (lambda: roi_align(X, np.array([[0, 0, np.nan, 1, 1.0]]), 2), PoolingInputError, "must be finite"),
        (lambda: roi_pool(X, np.array([[0, 0, 0, np.inf, 1.0]]), 2), PoolingInputError, "must be finite"),
        (lambda: roi_align(X, np.array([[0, 0, 0, 3e9, 1.0]]), 2), PoolingInputError, r"within \+-2\*\*31"),
        (lambda: roi_pool(X, B * 1e6, 2, spatial_scale=1e4), PoolingInputError, "times spatial_scale"),
        (lambda: roi_align(X, B, 0), PoolingConfigError, "output_size must be >= 1"),
        (
            lambda: roi_pool(X, B, (2, 2, 2)),
            PoolingConfigError,
            "output_size must be an int or a sequence of 2",
        ),
        (lambda: roi_align(X, B, 1.5), PoolingConfigError, "output_size must be an integer"),
        (
            lambda: roi_align(X, B, 2, sampling_ratio=1.5),
            PoolingConfigError,
            "sampling_ratio must be an integer",
        ),
        (
            lambda: roi_align(X, B, 2, sampling_ratio=True),
            PoolingConfigError,
            "sampling_ratio must be an integer",
        ),
        (lambda: roi_align(X, B, 2, spatial_scale=0.0), PoolingConfigError, "spatial_scale must be > 0"),
        (
            lambda: roi_pool(X, B, 2, spatial_scale=float("nan")),
            PoolingConfigError,
            "spatial_scale must be a finite",
        ),
        (lambda: roi_align(X, B, 2, aligned=1), PoolingConfigError, "aligned must be True or False"),
        (lambda: roi_align(X[0], B, 2), PoolingInputError, r"expects a 4-D array shaped \(N, C, H, W\)"),
        (lambda: roi_pool(X.astype(int), B, 2), PoolingInputError, "floating-point"),
        (lambda: roi_pool(np.zeros((1, 1, 0, 3)), B, 2), PoolingInputError, "H, W >= 1"),
        (lambda: roi_align(X, B, 2, data_format="NHWC"), PoolingConfigError, "data_format"),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_grad_output_shape_is_checked():
    _, pullback = vjp("roi_align", X, B, output_size=2)
    with pytest.raises(PoolingInputError, match=r"grad_output must have shape \(1, 3, 2, 2\)"):
        pullback(np.zeros((1, 2, 2, 3)))
