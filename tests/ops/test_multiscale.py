"""multiscale_roi_align: torchvision MultiScaleRoIAlign parity, level and scale rules, gradients, errors."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from poolkit import registry
from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import vjp
from poolkit.ops.multiscale import multiscale_roi_align
from poolkit.ops.roi import roi_align

from helpers import numeric_grad


def pyramid(rng, n, c, size, levels):
    return [rng.standard_normal((n, c, -(-size[0] // 2**i), -(-size[1] // 2**i))) for i in range(levels)]


def image_boxes(rng, n, per_image, hw):
    out = []
    for _ in range(n):
        xy = rng.uniform(-0.1, 1.0, (per_image, 2)) * hw[::-1]
        wh = rng.uniform(0, 1, (per_image, 2)) * rng.choice([0.05, 0.3, 1.0], (per_image, 1)) * hw[::-1]
        b = np.concatenate([xy, xy + wh], axis=1)
        b[0, 2] = b[0, 0] - 9  # reversed x: negative area, no level in torchvision
        b[1, 3] = b[1, 1]  # zero height: area 0 -> the lowest level
        b[2, 2:] = b[2, :2] - 30  # reversed both: positive area
        out.append(b)
    return out


def tv_run(feats, boxes, sizes, g, out, sr, **kw):
    ft = [torch.tensor(f, requires_grad=True) for f in feats]
    m = MultiScaleRoIAlign([f"p{i}" for i in range(len(ft))], out, sr, **kw)
    y = m(OrderedDict((f"p{i}", t) for i, t in enumerate(ft)), [torch.tensor(b) for b in boxes], sizes)
    y.backward(torch.tensor(g))
    return y.detach().numpy(), [t.grad.numpy() for t in ft]


@pytest.mark.parametrize("levels", [1, 2, 4])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
def test_matches_torchvision(levels, sampling_ratio, rng):
    sizes = [(200, 190), (256, 250)]  # largest height 256: maps of 64, 32, 16, 8 rows -> 1/4 ... 1/32
    feats = pyramid(rng, 2, 3, (64, 63), levels)
    boxes = image_boxes(rng, 2, 30, np.array([256, 250]))
    g = rng.standard_normal((60, 3, 3, 2))
    with np.errstate(all="raise"):
        y, pullback = vjp(
            "multiscale_roi_align", feats, boxes, sizes, output_size=(3, 2), sampling_ratio=sampling_ratio
        )
        grads = pullback(g)["features"]
    ty, tgs = tv_run(feats, boxes, sizes, g, (3, 2), sampling_ratio)
    np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-12)
    assert isinstance(grads, list) and len(grads) == levels
    for ours, theirs in zip(grads, tgs):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    if levels > 1:
        np.testing.assert_array_equal(y[[0, 30]], 0)  # negative area: pooled from no level


def test_canonical_settings_and_uneven_sizes_match_torchvision(rng):
    sizes = [(800, 1216), (760, 1100)]
    feats = [
        rng.standard_normal((2, 2, h, w)) for h, w in [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
    ]
    boxes = image_boxes(rng, 2, 40, np.array([800, 1216]))
    for s0, k0 in [(224, 4), (100, 3), (300.0, 6)]:
        y, pullback = vjp(
            "multiscale_roi_align", feats, boxes, sizes, output_size=2, canonical_scale=s0, canonical_level=k0
        )
        g = rng.standard_normal(y.shape)
        ty, tgs = tv_run(feats, boxes, sizes, g, 2, -1, canonical_scale=s0, canonical_level=k0)
        np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-12)
        for ours, theirs in zip(pullback(g)["features"], tgs):
            np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_level_rule_adds_eps_outside_the_logarithm(rng):
    # Maps at scales 1/4 ... 1/32 (k_min = 2, k_max = 5); k0 = 8, s0 = 224. A box of side just below
    # 224 / 32 = 7 has k0 + log2(s / s0) just below 3: floor(. + 1e-6) = 2 -> map 0. With the 1e-6 inside the
    # logarithm (log2(s / s0 + 1e-6)) it would reach level 3 -> map 1.
    feats = [np.full((1, 1, 64 // 2**i, 64 // 2**i), float(i)) for i in range(4)]
    side = 7 * (1 - 1e-6)
    boxes = [
        np.array([[10.0, 10.0, 10.0 + side, 10.0 + side], [0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 200.0, 200.0]])
    ]
    y = multiscale_roi_align(feats, boxes, [(256, 256)], 1, canonical_level=8)
    np.testing.assert_array_equal(
        y[:, 0, 0, 0], [0.0, 2.0, 3.0]
    )  # 20 -> level 4 -> map 2; 200 -> 7, clamped to 5
    ty, _ = tv_run(feats, boxes, [(256, 256)], np.ones_like(y), 1, -1, canonical_level=8)
    np.testing.assert_array_equal(y, ty)


def test_scale_uses_heights_and_rounds_the_log(rng):
    # Heights 48 and 24 of a 200-high image: log2(0.24) = -2.06 -> 1/4, log2(0.12) = -3.06 -> 1/8
    # (the widths, here equal to the image's, are ignored).
    feats = [rng.standard_normal((1, 2, 48, 300)), rng.standard_normal((1, 2, 24, 300))]
    boxes = [np.array([[4.0, 8.0, 40.0, 30.0], [10.0, 10.0, 190.0, 150.0]])]
    y = multiscale_roi_align(feats, boxes, [(200, 300)], (2, 2), sampling_ratio=2)
    ref0 = roi_align(feats[0], boxes, (2, 2), spatial_scale=0.25, sampling_ratio=2)
    ref1 = roi_align(feats[1], boxes, (2, 2), spatial_scale=0.125, sampling_ratio=2)
    np.testing.assert_array_equal(y[0], ref0[0])
    np.testing.assert_array_equal(y[1], ref1[1])


def test_single_map_pools_every_box(rng):
    feats = [rng.standard_normal((2, 2, 16, 16))]
    boxes = [np.array([[30.0, 2.0, 5.0, 20.0]]), np.array([[1.0, 1.0, 40.0, 50.0]])]  # reversed box kept
    y = multiscale_roi_align(feats, boxes, [(64, 64), (60, 64)], 2)
    np.testing.assert_array_equal(y, roi_align(feats[0], boxes, 2, spatial_scale=0.25))
    assert np.abs(y[0]).sum() > 0


def test_dict_input_keeps_insertion_order_and_channels_last(rng):
    feats = pyramid(rng, 1, 3, (32, 32), 3)
    boxes = image_boxes(rng, 1, 12, np.array([128, 128]))
    y, pb = vjp("multiscale_roi_align", feats, boxes, [(128, 128)], output_size=2)
    yd = multiscale_roi_align({"a": feats[0], "b": feats[1], "c": feats[2]}, boxes, [(128, 128)], 2)
    np.testing.assert_array_equal(yd, y)
    cl = [np.moveaxis(f, 1, -1).copy() for f in feats]
    yl, pbl = vjp("multiscale_roi_align", cl, boxes, [(128, 128)], output_size=2, data_format="channels_last")
    np.testing.assert_array_equal(np.moveaxis(yl, -1, 1), y)
    g = rng.standard_normal(y.shape)
    for a, b in zip(pbl(np.moveaxis(g, 1, -1))["features"], pb(g)["features"]):
        np.testing.assert_array_equal(np.moveaxis(a, -1, 1), b)


def test_gradients_by_finite_differences(rng):
    feats = [rng.standard_normal((1, 2, 6, 6)), rng.standard_normal((1, 2, 3, 3))]
    boxes = [np.array([[1.3, 2.6, 13.1, 17.4], [3.3, 1.1, 22.7, 21.9], [0.6, 0.2, 4.4, 3.7]])]
    kw = dict(output_size=(2, 2), canonical_scale=24, canonical_level=4)  # levels 3, 3 and 2 (clamped)
    y, pullback = vjp("multiscale_roi_align", feats, boxes, [(24, 24)], **kw)
    g = rng.standard_normal(y.shape)
    grads = pullback(g)["features"]
    for i in range(2):

        def f(v, i=i):
            fs = list(feats)
            fs[i] = v
            return multiscale_roi_align(fs, boxes, [(24, 24)], **kw)

        numeric = numeric_grad(f, feats[i], g)
        assert np.abs(numeric).max() > 0  # both levels are used
        np.testing.assert_allclose(grads[i], numeric, rtol=1e-6, atol=1e-7)


def test_float32_and_registration(rng):
    feats = [f.astype(np.float32) for f in pyramid(rng, 2, 2, (16, 16), 2)]
    boxes = image_boxes(rng, 2, 6, np.array([64, 64]))
    y, pullback = vjp("multiscale_roi_align", feats, boxes, [(64, 64)] * 2, output_size=2)
    assert y.dtype == np.float32 and all(
        gf.dtype == np.float32 for gf in pullback(np.ones_like(y))["features"]
    )
    info = registry.get("multiscale_roi_align")
    assert info.family == "structured" and info.differentiable == ("features",)
    assert info.arrays == ("features", "boxes", "image_sizes")
    arrays, settings = info.example(rng.standard_normal((2, 3, 8, 8)))
    y, pullback = vjp("multiscale_roi_align", *arrays, **settings)
    grads = pullback(np.ones_like(y))["features"]
    assert y.shape == (4, 3, 2, 2) and all(np.abs(gf).sum() > 0 for gf in grads)  # the example uses both maps


F = [np.zeros((2, 3, 8, 8)), np.zeros((2, 3, 4, 4))]
BX = [np.array([[0.0, 0.0, 10.0, 10.0]])] * 2
S = [(32, 32), (32, 32)]


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: multiscale_roi_align([], BX, S, 2), PoolingInputError, "non-empty list"),
        (lambda: multiscale_roi_align(F[0], BX, S, 2), PoolingInputError, "list"),
        (
            lambda: multiscale_roi_align([F[0], F[1][:, :2]], BX, S, 2),
            PoolingInputError,
            r"features\[1\] has \(2, 2\)",
        ),
        (lambda: multiscale_roi_align([F[0], F[1][:1]], BX, S, 2), PoolingInputError, "same batch size"),
        (
            lambda: multiscale_roi_align(F, BX, S[:1], 2),
            PoolingInputError,
            "one .height, width. per image, 2",
        ),
        (lambda: multiscale_roi_align(F, BX, [(32, 32), (32,)], 2), PoolingInputError, r"image_sizes\[1\]"),
        (lambda: multiscale_roi_align(F, BX, [(32, 32), (0, 5)], 2), PoolingInputError, "positive ints"),
        (lambda: multiscale_roi_align(F, BX * 2, S, 2), PoolingInputError, "list of 4 per-image arrays"),
        (lambda: multiscale_roi_align(F, [np.zeros((1, 5))], S, 2), PoolingInputError, r"\(L, 4\)"),
        (lambda: multiscale_roi_align(F, [np.full((1, 4), np.nan)], S, 2), PoolingInputError, "finite"),
        (lambda: multiscale_roi_align(F, BX, S, 0), PoolingConfigError, "output_size"),
        (lambda: multiscale_roi_align(F, BX, S, 2, canonical_scale=0), PoolingConfigError, "canonical_scale"),
        (
            lambda: multiscale_roi_align(F, BX, S, 2, canonical_level=1.5),
            PoolingConfigError,
            "canonical_level",
        ),
        (lambda: multiscale_roi_align([F[0][0]], BX, S, 2), PoolingInputError, r"features\[0\]"),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
