"""masked_pool: global and windowed pooling restricted to a binary or soft mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import avg_pool2d, masked_pool, masked_pool2d, max_pool2d

from helpers import check_grads, distinct


def test_masked_average_pooling_as_in_few_shot_segmentation(rng):
    # The usual formulation: sum(feat * mask) / (sum(mask) + 0) over H, W.
    x = rng.standard_normal((2, 4, 6, 5))
    m = (rng.random((2, 1, 6, 5)) > 0.4).astype(float)
    xt, mt = torch.tensor(x), torch.tensor(m)
    ref = ((xt * mt).sum((2, 3)) / mt.sum((2, 3))).numpy()
    np.testing.assert_allclose(masked_pool2d(x, m), ref, rtol=1e-12)
    np.testing.assert_allclose(masked_pool2d(x, m, "sum"), (xt * mt).sum((2, 3)).numpy(), rtol=1e-12)
    ref_max = torch.where(mt > 0, xt, torch.tensor(-np.inf, dtype=torch.float64)).amax((2, 3)).numpy()
    np.testing.assert_array_equal(masked_pool2d(x, m, "max"), ref_max)


def test_full_mask_equals_plain_pooling(rng):
    x = rng.standard_normal((2, 3, 7, 6))
    ones = np.ones((2, 1, 7, 6))
    np.testing.assert_allclose(
        masked_pool2d(x, ones, "avg", 3, 2, 1), avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    )
    np.testing.assert_array_equal(masked_pool2d(x, ones, "max", 3, 2, 1), max_pool2d(x, 3, 2, 1))


def test_windowed_matches_torch(rng):
    x = rng.standard_normal((1, 2, 8, 8))
    m = rng.random((1, 2, 8, 8))
    xt, mt = torch.tensor(x), torch.tensor(m)
    ref = (F.avg_pool2d(xt * mt, 2) / F.avg_pool2d(mt, 2)).numpy()
    np.testing.assert_allclose(masked_pool2d(x, m, "avg", 2), ref, rtol=1e-12)


def test_empty_mask_rule():
    x = np.ones((1, 2, 4, 4))
    m = np.zeros((1, 1, 4, 4))
    m[..., :2, :2] = 1.0
    for mode in ("avg", "sum", "max"):
        with np.errstate(all="raise"):
            y = masked_pool2d(x, m, mode, kernel_size=2)
        assert y[0, 0, 0, 0] == (4.0 if mode == "sum" else 1.0)
        assert (y[..., 1, :] == 0).all() and (y[..., :, 1] == 0).all()


@pytest.mark.parametrize("mode", ["avg", "sum", "max"])
@pytest.mark.parametrize(
    "kw", [{}, {"kernel_size": 3, "stride": 2, "padding": 1}, {"kernel_size": 2, "ceil_mode": True}]
)
def test_gradients_for_x_and_soft_mask(mode, kw, rng):
    x = distinct((2, 3, 5, 5), rng)
    m = rng.uniform(0.1, 1.0, (2, 1, 5, 5))
    wrt = ("x",) if mode == "max" else ("x", "mask")
    check_grads("masked_pool2d", {"x": x, "mask": m}, rng, wrt=wrt, mode=mode, **kw)
    check_grads(
        "masked_pool2d", {"x": x, "mask": rng.uniform(0.1, 1, x.shape)}, rng, wrt=wrt, mode=mode, **kw
    )


def test_channels_last_and_1d_3d(rng):
    x = rng.standard_normal((2, 3, 6, 5))
    m = rng.random((2, 1, 6, 5))
    yl = masked_pool(np.moveaxis(x, 1, -1), np.moveaxis(m, 1, -1), "avg", 2, data_format="channels_last")
    np.testing.assert_allclose(np.moveaxis(yl, -1, 1), masked_pool(x, m, "avg", 2), rtol=1e-12)
    check_grads(
        "masked_pool1d",
        {"x": rng.standard_normal((2, 2, 7)), "mask": rng.random((2, 1, 7))},
        rng,
        kernel_size=3,
    )
    check_grads(
        "masked_pool3d", {"x": rng.standard_normal((1, 2, 3, 4, 3)), "mask": rng.random((1, 2, 3, 4, 3))}, rng
    )


def test_errors():
    x = np.zeros((1, 2, 4, 4))
    with pytest.raises(
        PoolingInputError, match=r"mask must have shape \(1, 2, 4, 4\) \(like x\) or \(1, 1, 4, 4\)"
    ):
        masked_pool2d(x, np.ones((4, 4)))
    with pytest.raises(PoolingInputError, match="mask values must be finite and >= 0"):
        masked_pool2d(x, -np.ones((1, 1, 4, 4)))
    with pytest.raises(PoolingConfigError, match="mode must be one of 'avg', 'sum', 'max'"):
        masked_pool2d(x, np.ones((1, 1, 4, 4)), "mean")
