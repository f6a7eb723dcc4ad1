"""soft_pool: the reference formula, its limits, stability, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poolkit.ops import avg_pool2d, max_pool2d, soft_pool, soft_pool1d, soft_pool2d, vjp

from cases import RESEARCH_CASES, Case
from helpers import check_grads


def _reference(x: np.ndarray, k, s, p) -> np.ndarray:
    """The paper's CPU formulation, ``avg_pool(x e^x) / avg_pool(e^x)``, in float64 torch."""
    xt = torch.tensor(x, dtype=torch.float64)
    e = torch.exp(xt)
    return (F.avg_pool2d(xt * e, k, s, p) / F.avg_pool2d(e, k, s, p)).numpy()


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)])
def test_matches_reference_formula(k, s, p, rng):
    x = rng.standard_normal((2, 3, 7, 8))
    np.testing.assert_allclose(soft_pool2d(x, k, s, p), _reference(x, k, s, p), rtol=1e-12)


@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_finite_differences(case: Case, layout, rng):
    x = case.input(rng)
    if layout == "channels_last":
        x = np.moveaxis(x, 1, -1).copy()
    check_grads("soft_pool", {"x": x}, rng, data_format=layout, **case.window())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_inputs_stay_finite_and_correct(dtype, rng):
    x = (rng.standard_normal((1, 2, 6, 6)) * 1e4).astype(dtype)
    y, pullback = vjp("soft_pool2d", x, kernel_size=2)
    assert np.isfinite(y).all()
    # At this scale the softmax is one-hot: SoftPool equals max pooling.
    np.testing.assert_array_equal(y, max_pool2d(x, 2))
    gx = pullback(np.ones_like(y))["x"]
    assert np.isfinite(gx).all()
    # (exp(-1e4 * gap) underflows to 0 in float32; in float64 it leaves terms below 1e-200)
    np.testing.assert_allclose(gx, vjp("max_pool2d", x, kernel_size=2)[1](np.ones_like(y))["x"], atol=1e-200)


def test_reference_overflows_where_we_do_not():
    x = np.full((1, 1, 2, 2), 100.0, dtype=np.float32)
    xt = torch.tensor(x)
    ref = (F.avg_pool2d(xt * torch.exp(xt), 2) / F.avg_pool2d(torch.exp(xt), 2)).numpy()
    assert np.isnan(ref).all()  # exp(100) overflows float32
    np.testing.assert_array_equal(soft_pool2d(x, 2), [[[[100.0]]]])


def test_limits():
    # All-equal windows average to the value; a dominant value wins.
    np.testing.assert_allclose(soft_pool2d(np.full((1, 1, 4, 4), 3.0), 2), np.full((1, 1, 2, 2), 3.0))
    x = np.zeros((1, 1, 4, 4))
    np.testing.assert_allclose(soft_pool2d(x, 2), avg_pool2d(x, 2))
    # The softmax over [0, log 3] weighs them 1/4 and 3/4.
    np.testing.assert_allclose(soft_pool1d(np.array([[[0.0, np.log(3.0)]]]), 2), [[[0.75 * np.log(3.0)]]])


def test_non_finite_inputs_follow_the_documented_rule():
    x = np.array(
        [[[[np.inf, 0.0], [1.0, 2.0]], [[-np.inf, -np.inf], [-np.inf, -np.inf]], [[np.nan, 0.0], [1.0, 2.0]]]]
    )
    with np.errstate(all="raise"):
        y, pullback = vjp("soft_pool2d", x, kernel_size=2)
        gx = pullback(np.ones_like(y))["x"]
    assert y[0, 0, 0, 0] == np.inf and y[0, 1, 0, 0] == -np.inf and np.isnan(y[0, 2, 0, 0])
    assert (gx == 0).all()


def test_padding_is_outside_the_softmax(rng):
    x = rng.standard_normal((1, 1, 5, 5)) - 10.0  # very negative: zero padding would dominate
    y = soft_pool2d(x, 3, 2, 1)
    assert (y < -5).all()


def test_channels_last_and_float16(rng):
    x = rng.standard_normal((2, 3, 7, 6))
    yl = soft_pool(np.moveaxis(x, 1, -1), 3, 2, 1, data_format="channels_last")
    np.testing.assert_allclose(np.moveaxis(yl, -1, 1), soft_pool(x, 3, 2, 1), rtol=1e-13)
    y16 = soft_pool2d(x.astype(np.float16), 2)
    assert y16.dtype == np.float16
    np.testing.assert_allclose(
        y16, soft_pool2d(x.astype(np.float16).astype(np.float32), 2).astype(np.float16)
    )
