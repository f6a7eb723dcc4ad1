"""Spatial pyramid pooling, YOLO's SPP and SPPF."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import avg_pool2d, vjp
from poolkit.ops.pyramid import spatial_pyramid_pool, spatial_pyramid_pool2d, spp, spp2d, sppf, sppf2d

from helpers import check_grads, distinct


@pytest.mark.parametrize("levels", [(1, 2, 4), (1, 2, 3, 6)])
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_fixed_length_for_any_input_size(levels, mode):
    rng = np.random.default_rng(0)
    expected = 3 * sum(n * n for n in levels)
    for h in range(1, 14, 3):
        for w in (1, 5, 8, 13):
            x = rng.standard_normal((2, 3, h, w))
            y = spatial_pyramid_pool2d(x, levels, mode)
            assert y.shape == (2, expected)
            pool = F.adaptive_max_pool2d if mode == "max" else F.adaptive_avg_pool2d
            ref = torch.cat([pool(torch.tensor(x), n).flatten(1) for n in levels], dim=1).numpy()
            np.testing.assert_allclose(y, ref, rtol=1e-12)


def test_paper_bins_can_differ_from_n():
    x = np.random.default_rng(1).standard_normal((1, 2, 7, 7))
    y = spatial_pyramid_pool2d(x, (4,), bins="paper")  # window ceil(7/4)=2, stride floor(7/4)=1: 6 bins
    assert y.shape == (1, 2 * 36)
    np.testing.assert_array_equal(y, F.max_pool2d(torch.tensor(x), 2, 1).flatten(1).numpy())
    with pytest.raises(PoolingInputError, match="bins='paper' needs at least 4 samples"):
        spatial_pyramid_pool2d(x[:, :, :3], (4,), bins="paper")


def test_channels_last_and_gradients(rng):
    x = distinct((2, 3, 6, 5), rng)
    xl = np.moveaxis(x, 1, -1).copy()
    np.testing.assert_array_equal(
        spatial_pyramid_pool(xl, data_format="channels_last"), spatial_pyramid_pool(x)
    )
    check_grads("spatial_pyramid_pool2d", {"x": x}, rng, levels=(1, 2, 4))
    check_grads(
        "spatial_pyramid_pool2d", {"x": xl}, rng, levels=(1, 3), mode="avg", data_format="channels_last"
    )
    check_grads(
        "spatial_pyramid_pool1d", {"x": rng.standard_normal((2, 2, 7))}, rng, levels=(1, 2), mode="avg"
    )


def test_sppf_equals_spp_exactly_with_ties(rng):
    for shape in [(2, 3, 11, 9), (1, 2, 5, 5), (1, 1, 20, 17)]:
        x = rng.integers(-2, 3, size=shape).astype(float)
        np.testing.assert_array_equal(sppf2d(x, 5, 3), spp2d(x, (5, 9, 13)))
        np.testing.assert_array_equal(sppf2d(x, 3, 2), spp2d(x, (3, 5)))
    x = rng.integers(-2, 3, size=(1, 2, 8, 9, 7)).astype(float)  # 3-D, generic entry points
    np.testing.assert_array_equal(sppf(x), spp(x))


def test_sppf_matches_the_yolov5_module(rng):
    x = rng.standard_normal((2, 4, 12, 10))
    t = torch.tensor(x)
    y1 = F.max_pool2d(t, 5, 1, 2)
    y2 = F.max_pool2d(y1, 5, 1, 2)
    y3 = F.max_pool2d(y2, 5, 1, 2)
    np.testing.assert_array_equal(sppf2d(x), torch.cat([t, y1, y2, y3], 1).numpy())


def test_equivalence_fails_for_average_pooling(rng):
    x = rng.standard_normal((1, 1, 9, 9))
    twice = avg_pool2d(avg_pool2d(x, 5, 1, 2), 5, 1, 2)
    once = avg_pool2d(x, 9, 1, 4)
    assert not np.allclose(twice, once)


def test_spp_and_sppf_gradients(rng):
    x = distinct((1, 2, 7, 6), rng)
    check_grads("sppf2d", {"x": x}, rng, kernel_size=3, repeats=2)
    check_grads("spp2d", {"x": x}, rng, kernel_sizes=(3, 5))
    xl = np.moveaxis(x, 1, -1).copy()
    check_grads("sppf2d", {"x": xl}, rng, kernel_size=3, repeats=3, data_format="channels_last")
    # Same function, same gradient on tie-free inputs.
    _, pa = vjp("sppf2d", x, kernel_size=5, repeats=3)
    y, pb = vjp("spp2d", x, kernel_sizes=(5, 9, 13))
    g = rng.standard_normal(y.shape)
    np.testing.assert_allclose(pa(g)["x"], pb(g)["x"], rtol=1e-12)


def test_errors():
    x = np.zeros((1, 1, 8, 8))
    with pytest.raises(PoolingConfigError, match="kernel_size must be odd"):
        sppf2d(x, 4)
    with pytest.raises(PoolingConfigError, match="levels must be a non-empty sequence"):
        spatial_pyramid_pool2d(x, ())
    with pytest.raises(PoolingConfigError, match="levels must be >= 1, got 0"):
        spatial_pyramid_pool2d(x, (0, 1))
    with pytest.raises(PoolingConfigError, match="mode must be one of 'max', 'avg'"):
        spatial_pyramid_pool2d(x, (1,), "sum")
