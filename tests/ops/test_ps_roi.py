"""ps_roi_pool and ps_roi_align (R-FCN): torchvision parity, channel mapping, gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.ops as tvo

from poolkit import registry
from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import vjp
from poolkit.ops.ps_roi import ps_roi_align, ps_roi_pool
from poolkit.ops.roi import roi_align

from helpers import check_grads, numeric_grad


def mixed_boxes(rng, n_images, k, h, w, scale=1.0):
    """``(K, 5)`` boxes: ordinary, tiny, huge, outside, zero-size, reversed, on halves, the whole map."""
    hh, ww = h / scale, w / scale
    xy = rng.uniform(-0.3, 1.1, (k, 2)) * [ww, hh]
    size = rng.choice([0.1, 0.5, 1.0, 2.5], (k, 1)) * rng.uniform(0, 1, (k, 2)) * [ww, hh]
    b = np.concatenate([xy, xy + size], axis=1)
    special = np.array(
        [
            [2.0, 1.0, 2.0, 4.0],
            [1.0, 3.0, 5.0, 3.0],
            [4.0, 1.0, 1.5, 3.5],
            [1.0, 4.0, 3.5, 0.5],
            [5.0, 4.0, 2.0, 1.0],
            [ww + 3, hh + 2, ww + 9, hh + 6],
            [-9.0, -8.0, -3.0, -2.5],
            [-3 * ww, -2 * hh, 4 * ww, 3 * hh],
            [1.3, 2.2, 1.5, 2.3],
            [0.5, 1.5, 2.5, 3.5],
            [0.0, 0.0, ww, hh],
        ]
    )
    special[:10] /= scale
    b[: len(special)] = special
    return np.concatenate([rng.integers(0, n_images, (k, 1)).astype(float), b], axis=1)


def tv_run(fn, x, boxes, g, **kw):
    xt = torch.tensor(x, requires_grad=True)
    bt = [torch.tensor(b) for b in boxes] if isinstance(boxes, list) else torch.tensor(boxes)
    y = fn(xt, bt, **kw)
    y.backward(torch.tensor(g))
    return y.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("out", [(3, 2), (1, 1), (2, 4)])
def test_ps_roi_pool_forward_matches_torchvision_bitwise(scale, out, rng):
    n, h, w = 2, 9, 8
    x = rng.standard_normal((n, 2 * out[0] * out[1], h, w))
    b = mixed_boxes(rng, n, 60, h, w, scale)
    with np.errstate(all="raise"):
        y = ps_roi_pool(x, b, out, spatial_scale=scale)
    ty = tvo.ps_roi_pool(torch.tensor(x), torch.tensor(b), out, spatial_scale=scale).numpy()
    assert y.shape == (60, 2, *out)
    np.testing.assert_array_equal(y, ty)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_ps_roi_pool_backward_matches_torchvision_away_from_the_last_row_and_column(scale, rng):
    # torchvision's backward clips bins to [0, H] while its forward clips to [0, H - 1]; for boxes whose
    # bins end before the last row and column the two agree, and so do we.
    n, c, h, w = 2, 12, 9, 10
    x = rng.standard_normal((n, c, h, w))
    b = mixed_boxes(rng, n, 80, h, w, scale)
    q = np.trunc(b[:, 1:] * scale + np.copysign(0.5, b[:, 1:]))  # C's round, for choosing the boxes
    ends = np.maximum(q[:, 2:], q[:, :2] + 1)  # the end of the last bin: x1' + max(x2' - x1', 1)
    b = b[(ends[:, 0] <= w - 1) & (ends[:, 1] <= h - 1)]
    assert len(b) > 30
    y, pullback = vjp("ps_roi_pool", x, b, output_size=(3, 2), spatial_scale=scale)
    g = rng.standard_normal(y.shape)
    ty, tg = tv_run(tvo.ps_roi_pool, x, b, g, output_size=(3, 2), spatial_scale=scale)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_allclose(pullback(g)["x"], tg, rtol=1e-12, atol=1e-12)


def test_ps_roi_pool_gradient_is_that_of_the_forward_at_the_border(rng):
    x = rng.standard_normal((1, 4, 4, 4))
    b = np.array([[0, 0.0, 0.0, 4.0, 4.0]])  # bins [0, 2) and [2, 4): the forward clips 4 to 3
    y, pullback = vjp("ps_roi_pool", x, b, output_size=2)
    np.testing.assert_allclose(y[0, 0, 1, 1], x[0, 3, 2, 2])  # the last bin reads one pixel
    g = rng.standard_normal(y.shape)
    ours = pullback(g)["x"]
    numeric = numeric_grad(lambda v: ps_roi_pool(v, b, 2), x, g)
    np.testing.assert_allclose(ours, numeric, rtol=1e-7, atol=1e-8)
    _, tg = tv_run(tvo.ps_roi_pool, x, b, g, output_size=2)
    assert np.abs(tg - numeric).max() > 0.1  # torchvision's backward is not the gradient of its forward here


def _no_negative_grid(b, scale, out):
    gw = np.ceil((b[:, 3] - b[:, 1]) * scale / out[1])
    gh = np.ceil((b[:, 4] - b[:, 2]) * scale / out[0])
    return gw * gh >= 0


@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_ps_roi_align_matches_torchvision(sampling_ratio, scale, rng):
    n, h, w, out = 2, 8, 9, (2, 3)
    x = rng.standard_normal((n, 12, h, w))
    b = mixed_boxes(rng, n, 60, h, w, scale)
    boxes = [b[b[:, 0] == i, 1:] for i in range(n)] if sampling_ratio % 2 else b
    kw = dict(output_size=out, spatial_scale=scale, sampling_ratio=sampling_ratio)
    g = rng.standard_normal((len(b), 2, *out))
    with np.errstate(all="raise"):  # no NumPy warning, and no 0 / 0
        y, pullback = vjp("ps_roi_align", x, boxes, **kw)
        gx = pullback(g)["x"]
    ty, tg = tv_run(tvo.ps_roi_align, x, boxes, g, **kw)
    # torchvision divides by gh * gw without max(., 1): a zero-size box with the adaptive grid is 0 / 0.
    nan = np.isnan(ty)
    assert nan.any() == (sampling_ratio <= 0)
    np.testing.assert_array_equal(y[nan], 0)
    np.testing.assert_allclose(y[~nan], ty[~nan], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, tg, rtol=1e-12, atol=1e-12)


def test_ps_roi_align_is_roi_align_aligned_on_the_mapped_channel(rng):
    oh, ow = 2, 3
    x = rng.standard_normal((2, 2 * oh * ow, 7, 8))
    b = mixed_boxes(rng, 2, 30, 7, 8)
    b = b[_no_negative_grid(b, 1.0, (oh, ow))]  # roi_align(aligned=True) outputs 0 there as well
    for sr in (-1, 2):
        y = ps_roi_align(x, b, (oh, ow), sampling_ratio=sr)
        for c in range(2):
            for ph in range(oh):
                for pw in range(ow):
                    c_in = (c * oh + ph) * ow + pw
                    ref = roi_align(x[:, c_in : c_in + 1], b, (oh, ow), sampling_ratio=sr, aligned=True)
                    np.testing.assert_allclose(y[:, c, ph, pw], ref[:, 0, ph, pw], rtol=1e-13, atol=1e-14)


def test_channel_mapping_pinned():
    x = np.arange(4 * 16.0).reshape(1, 4, 4, 4)  # channel c holds 16 c + 4 i + j
    b = np.array([[0, 0.0, 0.0, 2.0, 2.0]])
    np.testing.assert_array_equal(ps_roi_pool(x, b, 2)[0, 0], [[0.0, 17.0], [36.0, 53.0]])
    # roi_w = max(x2' - x1', 1) = 1 (no + 1, unlike roi_pool): a point box reads one pixel.
    np.testing.assert_array_equal(
        ps_roi_pool(x, np.array([[0, 1.0, 2.0, 1.0, 2.0]]), 1)[0, :, 0, 0], [9, 25, 41, 57]
    )


def test_gradients_by_finite_differences(rng):
    x = rng.standard_normal((1, 8, 5, 6))
    b = np.array([[0, 0.3, 0.6, 4.1, 3.9], [0, -1.4, 1.2, 2.3, 5.6], [0, 2.6, 0.1, 5.4, 2.2]])
    check_grads("ps_roi_pool", {"x": x, "boxes": b}, rng, wrt=("x",), output_size=(2, 2))
    check_grads("ps_roi_align", {"x": x, "boxes": b}, rng, wrt=("x",), output_size=(1, 4), sampling_ratio=-1)
    check_grads("ps_roi_align", {"x": x, "boxes": b}, rng, wrt=("x",), output_size=(2, 2), sampling_ratio=2)


@pytest.mark.parametrize("op", ["ps_roi_pool", "ps_roi_align"])
def test_channels_last_and_dtypes(op, rng):
    x = rng.standard_normal((2, 12, 6, 7))
    b = mixed_boxes(rng, 2, 20, 6, 7)
    y, pb = vjp(op, x, b, output_size=(3, 2))
    yl, pbl = vjp(op, np.moveaxis(x, 1, -1).copy(), b, output_size=(3, 2), data_format="channels_last")
    assert y.shape == (20, 2, 3, 2) and yl.shape == (20, 3, 2, 2)
    np.testing.assert_array_equal(np.moveaxis(yl, -1, 1), y)
    g = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(np.moveaxis(pbl(np.moveaxis(g, 1, -1))["x"], -1, 1), pb(g)["x"])
    y32 = vjp(op, x.astype(np.float32), b, output_size=(3, 2))[0]
    y16 = vjp(op, x.astype(np.float16), b, output_size=(3, 2))[0]
    assert (y32.dtype, y16.dtype) == (np.float32, np.float16)
    np.testing.assert_allclose(y32, y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y16, y, atol=5e-3)


def test_registered_with_example(rng):
    for name in ("ps_roi_pool", "ps_roi_align"):
        info = registry.get(name)
        assert info.family == "structured" and info.ndims == (2,) and registry.resolve(f"{name}2d")[1] == 2
        arrays, settings = info.example(rng.standard_normal((2, 3, 8, 8)))
        y, pullback = vjp(name, *arrays, **settings)
        assert y.shape == (3, 1, 1, 3) and np.isfinite(pullback(np.ones_like(y))["x"]).all()


X = np.zeros((1, 6, 5, 5))
B = np.array([[0, 0.0, 0.0, 2.0, 2.0]])


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: ps_roi_pool(X, B, 2), PoolingInputError, r"C=6 must be a multiple of oh\*ow = 4"),
        (lambda: ps_roi_align(X, B, (2, 2)), PoolingInputError, "Use C = 8 channels"),
        (lambda: ps_roi_align(X, np.zeros((2, 4)), (1, 3)), PoolingInputError, r"\(K, 5\) array"),
        (lambda: ps_roi_pool(X, np.array([[1, 0, 0, 1, 1.0]]), 1), PoolingInputError, "batch index"),
        (lambda: ps_roi_align(X, np.array([[0, 0, 0, 1, np.inf]]), 1), PoolingInputError, "finite"),
        (lambda: ps_roi_align(X, B, 1, sampling_ratio=0.5), PoolingConfigError, "sampling_ratio"),
        (lambda: ps_roi_pool(X, B, 1, spatial_scale=-1.0), PoolingConfigError, "spatial_scale must be > 0"),
        (lambda: ps_roi_pool(X, B, (0, 3)), PoolingConfigError, "output_size must be >= 1"),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
