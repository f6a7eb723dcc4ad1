"""lp_pool: equal to PyTorch where PyTorch is defined, correct where it is not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poolkit.geometry import window_spec
from poolkit.ops import lp_pool1d, lp_pool2d, lp_pool3d, max_pool2d, vjp

from helpers import check_fd, torch_vjp
from reference import naive_pool

TORCH = {1: F.lp_pool1d, 2: F.lp_pool2d, 3: F.lp_pool3d}
OURS = {1: lp_pool1d, 2: lp_pool2d, 3: lp_pool3d}

SHAPES = {1: (2, 3, 11), 2: (2, 3, 8, 9), 3: (1, 2, 5, 6, 7)}


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 0.5, 2.5])
@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (2, 1)])
def test_matches_torch_on_non_negative_input(nd, p, k, s, rng):
    x = rng.uniform(0.1, 2.0, size=SHAPES[nd])
    y, pullback = vjp(f"lp_pool{nd}d", x, norm_type=p, kernel_size=k, stride=s)
    g = rng.standard_normal(y.shape)
    ty, tg, _ = torch_vjp(TORCH[nd], x, g, p, k, s)
    np.testing.assert_allclose(y, ty, rtol=1e-12)
    np.testing.assert_allclose(pullback(g)["x"], tg, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("p", [2.0, 4.0])
def test_matches_torch_on_signed_input_for_even_p(p, rng):
    x = rng.standard_normal((2, 3, 8, 8))
    y, pullback = vjp("lp_pool2d", x, norm_type=p, kernel_size=2)
    g = rng.standard_normal(y.shape)
    ty, tg, _ = torch_vjp(F.lp_pool2d, x, g, p, 2)
    np.testing.assert_allclose(y, ty, rtol=1e-12)
    np.testing.assert_allclose(pullback(g)["x"], tg, rtol=1e-10, atol=1e-12)


def test_negative_input_non_integer_p_is_finite_pytorch_184037():
    x = -np.abs(np.random.default_rng(0).standard_normal((1, 1, 4, 4))) - 0.1
    assert np.isnan(F.lp_pool2d(torch.tensor(x), 2.5, 2).numpy()).all()  # the PyTorch bug
    y = lp_pool2d(x, 2.5, 2)
    np.testing.assert_allclose(y, lp_pool2d(-x, 2.5, 2), rtol=1e-14)
    assert np.isfinite(y).all()


def test_p_inf_is_max_of_abs(rng):
    x = rng.standard_normal((2, 3, 8, 8))
    np.testing.assert_array_equal(lp_pool2d(x, np.inf, 2), max_pool2d(np.abs(x), 2))
    from helpers import distinct

    check_fd(
        "lp_pool2d", distinct((1, 2, 6, 6), rng), rng, norm_type=np.inf, kernel_size=3, stride=2, padding=1
    )


def test_ceil_mode_overhang_is_the_plain_sum(rng):
    x = rng.uniform(0.5, 2.0, size=(1, 2, 7, 7))
    ours = lp_pool2d(x, 2.0, 2, 3, ceil_mode=True)
    spec = window_spec((7, 7), 2, 3, 0, 1, True)
    ref, _ = naive_pool(x, "lp", spec.kernel_size, spec.stride, spec.padding, spec.dilation, True, p=2.0)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    theirs = F.lp_pool2d(torch.tensor(x), 2.0, 2, 3, ceil_mode=True).numpy()
    # Full windows agree; the overhanging last row/column is rescaled by PyTorch.
    np.testing.assert_allclose(ours[..., :2, :2], theirs[..., :2, :2], rtol=1e-12)
    np.testing.assert_allclose(ours[..., 2, 2] * np.sqrt(4 / 1), theirs[..., 2, 2], rtol=1e-12)


def test_zero_window_has_zero_gradient_pytorch_6765():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 0, 0] = 1.0
    for p in (0.5, 1.0, 2.0, 3.0):
        y, pullback = vjp("lp_pool2d", x, norm_type=p, kernel_size=2)
        gx = pullback(np.ones_like(y))["x"]
        assert np.isfinite(gx).all()
        assert gx[0, 0, 0, 0] == pytest.approx(1.0)
        assert not gx[0, 0, 2:, 2:].any()


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 0.7, 2.5])
def test_finite_differences(p, rng):
    x = rng.standard_normal((1, 2, 6, 7))
    x[np.abs(x) < 0.05] = 0.3  # keep away from the kink at 0
    check_fd(
        "lp_pool2d",
        x,
        rng,
        norm_type=p,
        kernel_size=3,
        stride=2,
        padding=1,
        ceil_mode=True,
        rtol=1e-5,
        atol=1e-7,
    )


def test_finite_differences_1d_3d_channels_last(rng):
    check_fd(
        "lp_pool1d",
        rng.uniform(0.2, 1, (2, 2, 9)),
        rng,
        norm_type=3.0,
        kernel_size=3,
        stride=2,
        dilation=2,
        rtol=1e-5,
    )
    x = rng.uniform(0.2, 1, (1, 4, 5, 4, 2))
    check_fd("lp_pool3d", x, rng, norm_type=2.0, kernel_size=2, data_format="channels_last", rtol=1e-5)
