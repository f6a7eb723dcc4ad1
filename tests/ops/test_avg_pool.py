"""avg_pool: PyTorch's divisors, TensorFlow's 'same', dilation, gradients, anchors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poolkit.geometry import window_spec
from poolkit.ops import avg_pool, avg_pool1d, avg_pool2d, avg_pool3d, vjp

from cases import WINDOW_CASES, Case, select
from helpers import check_fd, torch_vjp
from reference import naive_pool

TORCH = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
OURS = {1: avg_pool1d, 2: avg_pool2d, 3: avg_pool3d}


def _torch_kw(c: Case, include: bool, override):
    kw = dict(
        kernel_size=c.kernel_size,
        stride=c.stride,
        padding=c.padding,
        ceil_mode=c.ceil_mode,
        count_include_pad=include,
    )
    if override is not None:
        kw["divisor_override"] = override
    return kw


@pytest.mark.parametrize("include", [True, False], ids=["include-pad", "exclude-pad"])
@pytest.mark.parametrize("c", WINDOW_CASES)
def test_forward_backward_match_torch(c: Case, include, rng):
    x = c.input(rng)
    kw = _torch_kw(c, include, None)
    y, pullback = vjp(f"avg_pool{c.nd}d", x, **kw)
    g = rng.standard_normal(y.shape)
    ty, tg, _ = torch_vjp(TORCH[c.nd], x, g, **kw)
    np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(pullback(g)["x"], tg, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("c", select(WINDOW_CASES, where=lambda c: c.nd > 1))
def test_divisor_override_matches_torch(c: Case, rng):
    x = c.input(rng)
    for include in (True, False):
        kw = _torch_kw(c, include, 3)
        y, pullback = vjp(f"avg_pool{c.nd}d", x, **kw)
        g = rng.standard_normal(y.shape)
        ty, tg, _ = torch_vjp(TORCH[c.nd], x, g, **kw)
        np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(pullback(g)["x"], tg, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("c", select(WINDOW_CASES, where=lambda c: c.shape[0] > 0))
def test_float32_within_1e6_of_torch(c: Case, rng):
    x = c.input(rng, np.float32)
    kw = _torch_kw(c, False, None)
    ty, _, _ = torch_vjp(TORCH[c.nd], x, None, **kw)
    y = OURS[c.nd](x, **kw)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ty, rtol=1e-6, atol=1e-6)


def test_float16_accumulates_in_float32(rng):
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float16)
    y = avg_pool2d(x, 3, 2, 1)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, avg_pool2d(x.astype(np.float32), 3, 2, 1).astype(np.float16))


@pytest.mark.parametrize(
    "kw",
    [
        pytest.param(dict(kernel_size=3, stride=1, padding=1, dilation=2), id="dilation"),
        pytest.param(
            dict(kernel_size=(2, 3), stride=2, padding=1, dilation=(2, 1), ceil_mode=True), id="dilation-ceil"
        ),
        pytest.param(dict(kernel_size=3, stride=2, padding=((0, 1), (1, 0))), id="pairs"),
        pytest.param(
            dict(kernel_size=2, stride=2, padding=1, ceil_mode=True, divisor_override=5), id="override"
        ),
    ],
)
@pytest.mark.parametrize("include", [True, False])
def test_matches_loop_reference(kw, include, rng):
    x = rng.standard_normal((2, 2, 7, 8))
    spec = window_spec(
        (7, 8),
        kw["kernel_size"],
        kw.get("stride"),
        kw.get("padding", 0),
        kw.get("dilation", 1),
        kw.get("ceil_mode", False),
    )
    ry, _ = naive_pool(
        x,
        "avg",
        spec.kernel_size,
        spec.stride,
        spec.padding,
        spec.dilation,
        spec.ceil_mode,
        include,
        kw.get("divisor_override"),
    )
    np.testing.assert_allclose(avg_pool(x, count_include_pad=include, **kw), ry, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("include", [True, False])
def test_same_padding_matches_torch_on_explicit_pad(include, rng):
    x = rng.standard_normal((2, 3, 7, 8))
    spec = window_spec((7, 8), 3, 2, "same")
    (ht, hb), (wl, wr) = spec.padding
    xt = F.pad(torch.tensor(x), (wl, wr, ht, hb))
    ones = F.pad(torch.ones(1, 1, 7, 8, dtype=torch.float64), (wl, wr, ht, hb))
    if include:
        ty = F.avg_pool2d(xt, 3, 2).numpy()
    else:  # Keras' torch backend trick: divide by the pooled ones-mask
        ty = (F.avg_pool2d(xt, 3, 2) / F.avg_pool2d(ones, 3, 2)).numpy()
    np.testing.assert_allclose(avg_pool2d(x, 3, 2, "same", count_include_pad=include), ty, rtol=1e-12)


@pytest.mark.parametrize(
    "kw,layout",
    [
        pytest.param(
            dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
            "channels_first",
            id="pad-ceil-exclude",
        ),
        pytest.param(
            dict(kernel_size=(2, 3), stride=1, padding="same", dilation=(2, 1)),
            "channels_last",
            id="same-dilation-cl",
        ),
        pytest.param(dict(kernel_size=2, divisor_override=3), "channels_first", id="override"),
    ],
)
def test_finite_differences(kw, layout, rng):
    x = rng.standard_normal((1, 2, 6, 7))
    if layout == "channels_last":
        x = np.moveaxis(x, 1, -1).copy()
    check_fd("avg_pool2d", x, rng, data_format=layout, **kw)


def test_finite_differences_1d_3d(rng):
    check_fd(
        "avg_pool1d", rng.standard_normal((2, 2, 9)), rng, kernel_size=3, stride=2, padding=1, ceil_mode=True
    )
    check_fd(
        "avg_pool3d",
        rng.standard_normal((1, 1, 4, 5, 4)),
        rng,
        kernel_size=2,
        stride=1,
        padding=1,
        count_include_pad=False,
    )


def test_channels_last(rng):
    x = rng.standard_normal((2, 3, 9, 10))
    yl = avg_pool2d(np.moveaxis(x, 1, -1).copy(), 3, 2, 1, data_format="channels_last")
    # channels-last sums the axes in another order: equal up to rounding
    np.testing.assert_allclose(np.moveaxis(yl, -1, 1), avg_pool2d(x, 3, 2, 1), rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------- anchors (§b3)


def test_ceil_divisor_excludes_overhang_tract_2851():
    np.testing.assert_array_equal(
        avg_pool1d(np.array([[[1.0, 2, 3, 4, 5]]]), 2, 2, 0, True, True), [[[1.5, 3.5, 5.0]]]
    )


def test_coremltools_2844():
    x = np.arange(49.0).reshape(1, 1, 7, 7)
    np.testing.assert_allclose(
        avg_pool2d(x, 2, stride=3, ceil_mode=True)[0, 0], [[4, 7, 9.5], [25, 28, 30.5], [42.5, 45.5, 48]]
    )


def test_flax_2451_same_padding_counts():
    x = np.array([[[[1.0, 2], [3, 4]]]])
    np.testing.assert_allclose(
        avg_pool2d(x, 2, 1, "same", count_include_pad=True)[0, 0], [[2.5, 1.5], [1.75, 1.0]]
    )
    np.testing.assert_allclose(
        avg_pool2d(x, 2, 1, "same", count_include_pad=False)[0, 0], [[2.5, 3.0], [3.5, 4.0]]
    )


def test_window_without_valid_tap_is_zero_not_nan():
    y = avg_pool2d(np.ones((1, 1, 2, 2)), 2, 1, 1, dilation=3, count_include_pad=False)
    assert y.shape == (1, 1, 1, 1) and y.item() == 0.0
