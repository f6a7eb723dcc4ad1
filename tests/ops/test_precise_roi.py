"""precise_roi_pool: exact bin integrals, their limits, continuous box gradients, formats, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import avg_pool2d, vjp
from poolkit.ops import precise_roi as prroi_module
from poolkit.ops.precise_roi import precise_roi_pool, precise_roi_pool2d

from helpers import check_grads, numeric_grad

OP = "precise_roi_pool"

# (batch, x1, y1, x2, y2): inside, partly outside, crossing pixel lines, tiny, covering and beyond the map.
# No bin edge falls on an integer for 1 to 3 bins (central differences are exact to O(eps) only there).
BOXES = np.array(
    [
        [0, 0.3, 0.6, 3.77, 2.9],
        [1, -1.4, 0.2, 2.25, 5.7],
        [0, 2.5, -0.75, 6.6, 1.1],
        [1, 1.05, 1.95, 1.35, 2.2],
        [0, -2.2, -1.6, 6.9, 5.45],
        [1, 4.4, 3.3, 7.5, 6.1],
    ]
)


def _tent(u: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - np.abs(u))


def _f(img: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """The bilinear interpolant at points, straight from its definition: (C, H, W) -> (C, *points)."""
    shape = np.broadcast(px, py).shape
    out = np.zeros((img.shape[0], *shape))
    for i in range(img.shape[1]):
        for j in range(img.shape[2]):
            out += img[:, i, j].reshape(-1, *[1] * len(shape)) * (_tent(px - j) * _tent(py - i))
    return out


def _nodes(lo: float, hi: float, per_piece: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite midpoint rule on [lo, hi], split at every integer (where f changes formula)."""
    cuts = np.unique(np.concatenate([[lo, hi], np.arange(np.ceil(lo), np.floor(hi) + 1)]))
    pts, wts = [], []
    for a, b in zip(cuts[:-1], cuts[1:]):
        h = (b - a) / per_piece
        pts.append(a + h * (np.arange(per_piece) + 0.5))
        wts.append(np.full(per_piece, h))
    return np.concatenate(pts), np.concatenate(wts)


def _quadrature(x, boxes, oh, ow, scale=1.0, per_piece=3, split=True) -> np.ndarray:
    """Slow dense quadrature of the bin means, one bin at a time."""
    out = np.zeros((len(boxes), x.shape[1], oh, ow))
    for k, (n, x1, y1, x2, y2) in enumerate(boxes):
        x1, y1, x2, y2 = (v * scale for v in (x1, y1, x2, y2))
        bw, bh = (x2 - x1) / ow, (y2 - y1) / oh
        for ph in range(oh):
            for pw in range(ow):
                xlo, ylo = x1 + pw * bw, y1 + ph * bh
                if split:
                    px, wx = _nodes(xlo, xlo + bw, per_piece)
                    py, wy = _nodes(ylo, ylo + bh, per_piece)
                else:  # plain uniform midpoint grid
                    px = xlo + bw * (np.arange(per_piece) + 0.5) / per_piece
                    py = ylo + bh * (np.arange(per_piece) + 0.5) / per_piece
                    wx, wy = np.full(per_piece, bw / per_piece), np.full(per_piece, bh / per_piece)
                vals = _f(x[int(n)], px[None, :], py[:, None])
                out[k, :, ph, pw] = (vals * wy[:, None] * wx[None, :]).sum((1, 2)) / (bw * bh)
    return out


def _box_fd(x, boxes, g, **kw):
    """Finite differences of sum(g * y) in the box coordinates (column 0 is an index, not perturbed)."""
    idx = boxes[:, :1]

    def f(coords):
        return precise_roi_pool(x, np.concatenate([idx, coords], axis=1), **kw)

    return numeric_grad(f, boxes[:, 1:], g)


# ---------------------------------------------------------------- forward: the integral itself


@pytest.mark.parametrize("scale,size", [(1.0, (2, 3)), (0.5, (3, 1)), (1.7, 1)])
def test_matches_dense_quadrature(scale, size, rng):
    x = rng.standard_normal((2, 3, 5, 6))
    boxes = BOXES.copy()
    boxes[:, 1:] /= scale
    oh, ow = (size, size) if isinstance(size, int) else size
    y = precise_roi_pool(x, boxes, size, scale)
    np.testing.assert_allclose(y, _quadrature(x, boxes, oh, ow, scale), rtol=1e-10, atol=1e-12)


def test_matches_plain_fine_midpoint_rule(rng):
    # No knowledge of where the pieces meet: a uniform 800 x 800 midpoint grid per bin.
    x = rng.standard_normal((2, 2, 5, 6))
    boxes = BOXES[[0, 1, 3]]
    ref = _quadrature(x, boxes, 1, 2, per_piece=800, split=False)
    np.testing.assert_allclose(precise_roi_pool(x, boxes, (1, 2)), ref, rtol=0, atol=1e-6)


def test_random_boxes_against_quadrature(rng):
    x = rng.standard_normal((3, 2, 4, 7))
    xy = rng.uniform(-2.0, 7.0, (8, 2))
    boxes = np.concatenate([rng.integers(0, 3, (8, 1)), xy, xy + rng.uniform(0.05, 4.0, (8, 2))], 1)
    np.testing.assert_allclose(
        precise_roi_pool(x, boxes, (2, 2)), _quadrature(x, boxes, 2, 2), rtol=1e-10, atol=1e-12
    )


def test_constant_map_gives_the_constant_inside_and_zero_padding_outside():
    x = np.full((1, 2, 5, 6), 3.7)
    inside = np.array([[0, 0.0, 0.0, 5.0, 4.0], [0, 0.3, 1.2, 4.1, 3.9], [0, 2.0, 2.0, 2.5, 2.01]])
    np.testing.assert_allclose(precise_roi_pool(x, inside, (3, 4)), 3.7, rtol=1e-13)
    # f = 3.7 (1 + x) on [-1, 0]: the mean over [-1, 0] x [1, 2] is 3.7 / 2; beyond x = -1 it is 0.
    out = precise_roi_pool(x, np.array([[0, -1.0, 1.0, 0.0, 2.0], [0, -3.0, 1.0, -1.0, 2.0]]), 1)
    np.testing.assert_allclose(out[:, 0, 0, 0], [1.85, 0.0], atol=1e-15)


def test_pixel_cell_is_the_mean_of_its_four_corners(rng):
    x = rng.standard_normal((1, 3, 5, 6))
    i, j = 2, 3
    y = precise_roi_pool(x, np.array([[0, j, i, j + 1, i + 1]], dtype=float), 1)
    corners = (x[0, :, i, j] + x[0, :, i, j + 1] + x[0, :, i + 1, j] + x[0, :, i + 1, j + 1]) / 4
    np.testing.assert_allclose(y[0, :, 0, 0], corners, rtol=1e-13)


def test_single_pixel_hand_values():
    # F = delta at (i, j) = (2, 3): f = t(x - 3) t(y - 2), and per axis
    #   int_3^4 t = 1/2,   int_2^4 t = 1,   int_{2.5}^{3.5} t = 3/4,   int_{3.5}^{5} t = 1/8.
    x = np.zeros((1, 1, 5, 6))
    x[0, 0, 2, 3] = 1.0
    boxes = np.array(
        [
            [0, 3.0, 2.0, 4.0, 3.0],  # cell: (1/2 * 1/2) / 1
            [0, 2.0, 1.0, 4.0, 3.0],  # 2 x 2 around the pixel: (1 * 1) / 4
            [0, 2.5, 1.5, 3.5, 2.5],  # unit box centred on it: (3/4)^2 / 1
            [0, 3.5, 2.0, 5.0, 3.0],  # (1/8 * 1/2) / 1.5
        ]
    )
    out = precise_roi_pool(x, boxes, 1)[:, 0, 0, 0]
    np.testing.assert_allclose(out, [0.25, 0.25, 0.5625, 1 / 24], rtol=1e-14)


def test_reference_test_cell_bins_equal_2x2_average_pooling(rng):
    # The reference's own test: 7 x 7 bins of one pixel cell each, spatial_scale 0.5.
    x = rng.random((4, 16, 24, 32))
    boxes = np.array([[0, 0, 0, 14, 14], [1, 14, 14, 28, 28]], dtype=float)
    out = precise_roi_pool(x, boxes, 7, spatial_scale=0.5)
    gold = avg_pool2d(x, 2, stride=1)
    np.testing.assert_allclose(out, np.stack([gold[0, :, :7, :7], gold[1, :, 7:14, 7:14]]), rtol=1e-13)


def test_point_limit_is_the_bilinear_value(rng):
    x = rng.standard_normal((1, 2, 5, 6))
    pts = np.array([[1.3, 2.7], [0.0, 0.0], [4.9, 3.2], [2.0, 1.5], [-0.4, 2.2], [5.5, 4.0]])
    e = 1e-7
    boxes = np.concatenate([np.zeros((len(pts), 1)), pts - e, pts + e], axis=1)
    got = precise_roi_pool(x, boxes, 1)[:, :, 0, 0]
    want = _f(x[0], pts[:, 0], pts[:, 1]).T
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # torchvision's roi_align with aligned=True samples at (box - 0.5): shift by +0.5 to land on the same
    # point (inside the map, where torchvision's border clamping does not apply).
    inner = pts[:4]
    tv = roi_align(
        torch.tensor(x),
        torch.tensor(np.concatenate([np.zeros((4, 1)), inner + 0.5 - e, inner + 0.5 + e], axis=1)),
        1,
        sampling_ratio=1,
        aligned=True,
    ).numpy()[:, :, 0, 0]
    np.testing.assert_allclose(got[:4], tv, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize("scale,size", [(1.0, (2, 3)), (0.5, 1)])
def test_finite_differences_for_x(layout, scale, size, rng):
    x = rng.standard_normal((2, 3, 5, 6))
    boxes = BOXES.copy()
    boxes[:, 1:] /= scale
    if layout == "channels_last":
        x = np.moveaxis(x, 1, -1).copy()
    check_grads(
        OP,
        {"x": x, "boxes": boxes},
        rng,
        wrt=("x",),
        output_size=size,
        spatial_scale=scale,
        data_format=layout,
    )


@pytest.mark.parametrize("scale,size", [(1.0, (2, 3)), (0.5, 1), (2.0, (3, 2))])
def test_finite_differences_for_boxes(scale, size, rng):
    x = rng.standard_normal((2, 3, 5, 6))
    boxes = BOXES.copy()
    boxes[:, 1:] /= scale
    y, pullback = vjp(OP, x, boxes, output_size=size, spatial_scale=scale)
    g = rng.standard_normal(y.shape)
    gb = pullback(g)["boxes"]
    assert gb.shape == boxes.shape and (gb[:, 0] == 0).all()
    numeric = _box_fd(x, boxes, g, output_size=size, spatial_scale=scale)
    np.testing.assert_allclose(gb[:, 1:], numeric, rtol=1e-6, atol=1e-7)


def test_box_gradient_is_continuous_when_an_edge_crosses_a_pixel(rng):
    x = rng.standard_normal((1, 2, 5, 6))
    g = rng.standard_normal((1, 2, 2, 2))
    base = np.array([0, 0.6, 0.9, 3.0, 3.4])

    def grad_at(col: int, value: float) -> np.ndarray:
        b = base.copy()
        b[col] = value
        return vjp(OP, x, b[None], output_size=2)[1](g)["boxes"][0]

    for col, edge in [(3, 3.0), (1, 1.0), (4, 3.0), (2, 1.0)]:
        left, at, right = grad_at(col, edge - 1e-9), grad_at(col, edge), grad_at(col, edge + 1e-9)
        np.testing.assert_allclose(left, right, rtol=0, atol=1e-7)
        np.testing.assert_allclose(at, right, rtol=0, atol=1e-7)
        # A discontinuous rule (e.g. rounding to pixels) would jump by O(1) here; check the gradient is not 0.
        assert np.abs(at[1:]).max() > 1e-3
    # Also an inner bin edge: with 2 bins over [0.6, 3.4] the middle edge crosses 2.0 at x2 = 3.4.
    b = base.copy()
    b[3] = 3.4
    lo, hi = b.copy(), b.copy()
    lo[3], hi[3] = 3.4 - 1e-9, 3.4 + 1e-9
    gl = vjp(OP, x, lo[None], output_size=2)[1](g)["boxes"]
    gh = vjp(OP, x, hi[None], output_size=2)[1](g)["boxes"]
    np.testing.assert_allclose(gl, gh, rtol=0, atol=1e-7)


def test_gradients_in_list_format_and_float32(rng):
    x = rng.standard_normal((2, 3, 5, 6))
    per_image = [BOXES[BOXES[:, 0] == i, 1:].astype(np.float32) for i in range(2)]
    y, pullback = vjp(OP, x, per_image, output_size=(2, 2))
    g = rng.standard_normal(y.shape)
    grads = pullback(g)
    assert isinstance(grads["boxes"], list) and len(grads["boxes"]) == 2
    as_rows = np.concatenate([np.full((len(b), 1), i) for i, b in enumerate(per_image)], axis=0)
    rois = np.concatenate([as_rows, np.concatenate(per_image).astype(np.float64)], axis=1)
    y5, pull5 = vjp(OP, x, rois, output_size=(2, 2))
    np.testing.assert_allclose(y, y5, rtol=1e-14)
    full = pull5(g)["boxes"]
    for i, gb in enumerate(grads["boxes"]):
        assert gb.shape == per_image[i].shape and gb.dtype == np.float32
        np.testing.assert_allclose(gb, full[rois[:, 0] == i, 1:], rtol=1e-6)
    np.testing.assert_allclose(grads["x"], pull5(g)["x"], rtol=1e-14)


# ---------------------------------------------------------------- layouts, formats, chunks


def test_channels_last_equals_channels_first(rng):
    x = rng.standard_normal((2, 4, 5, 6))
    y, pull = vjp(OP, x, BOXES, output_size=(2, 3))
    xl = np.moveaxis(x, 1, -1).copy()
    yl, pull_l = vjp(OP, xl, BOXES, output_size=(2, 3), data_format="channels_last")
    assert yl.shape == (6, 2, 3, 4)
    np.testing.assert_allclose(yl, np.moveaxis(y, 1, -1), rtol=1e-13)
    g = rng.standard_normal(y.shape)
    a, b = pull(g), pull_l(np.moveaxis(g, 1, -1))
    np.testing.assert_allclose(b["x"], np.moveaxis(a["x"], 1, -1), rtol=1e-12)
    np.testing.assert_allclose(b["boxes"], a["boxes"], rtol=1e-12, atol=1e-14)


def test_box_formats_agree_and_empty_images(rng):
    x = rng.standard_normal((3, 2, 5, 6))
    per_image = [
        np.array([[0.5, 0.5, 3.0, 4.0], [1.0, 0.0, 2.0, 2.5]]),
        np.zeros((0, 4)),
        np.array([[2.0, 1.0, 5.0, 4.5]]),
    ]
    rois = np.array([[0, 0.5, 0.5, 3.0, 4.0], [0, 1.0, 0.0, 2.0, 2.5], [2, 2.0, 1.0, 5.0, 4.5]])
    np.testing.assert_array_equal(precise_roi_pool(x, per_image, 2), precise_roi_pool(x, rois, 2))
    np.testing.assert_array_equal(precise_roi_pool2d(x, rois, 2), precise_roi_pool(x, rois, 2))
    empty = precise_roi_pool(x, np.zeros((0, 5)), (2, 3))
    assert empty.shape == (0, 2, 2, 3)
    y, pull = vjp(OP, x, np.zeros((0, 5)), output_size=2)
    grads = pull(np.zeros_like(y))
    assert grads["boxes"].shape == (0, 5) and not grads["x"].any()


def test_chunked_contraction_matches_single_chunk(monkeypatch, rng):
    x = rng.standard_normal((2, 3, 5, 6))
    outside = np.array([[0, 8.0, 1.0, 9.0, 2.0], [1, 1.0, -4.0, 2.0, -1.0]])  # beyond f's support
    boxes = np.concatenate([BOXES, outside])[rng.permutation(len(BOXES) + 2)]  # images interleaved
    y, pull = vjp(OP, x, boxes, output_size=(2, 3))
    g = rng.standard_normal(y.shape)
    ref = pull(g)
    monkeypatch.setattr(prroi_module, "_CHUNK_ELEMENTS", 1)  # one box per chunk
    y1, pull1 = vjp(OP, x, boxes, output_size=(2, 3))
    np.testing.assert_allclose(y1, y, rtol=1e-13)
    for name in ("x", "boxes"):
        np.testing.assert_allclose(pull1(g)[name], ref[name], rtol=1e-12, atol=1e-14)
    far = boxes[:, 1] > 7.0
    far |= boxes[:, 4] < -0.5
    assert far.sum() == 2 and not y[far].any() and not ref["boxes"][far].any()
    for k in range(len(boxes)):  # and each box alone
        np.testing.assert_allclose(y[k], precise_roi_pool(x, boxes[k : k + 1], (2, 3))[0], rtol=1e-13)


# ---------------------------------------------------------------- degenerate and extreme inputs


def test_degenerate_boxes_give_zero_and_no_gradient(rng):
    x = rng.standard_normal((1, 2, 5, 6))
    boxes = np.array(
        [[0, 2.0, 1.0, 2.0, 3.0], [0, 1.0, 2.5, 3.0, 2.5], [0, 3.0, 1.0, 1.0, 3.0], [0, 1.0, 1.0, 3.0, 3.0]]
    )
    with np.errstate(all="raise"):
        y, pull = vjp(OP, x, boxes, output_size=2)
        grads = pull(np.ones_like(y))
    assert not y[:3].any() and y[3].all()
    assert not grads["boxes"][:3].any() and grads["boxes"][3, 1:].any()
    live_only = vjp(OP, x, boxes[3:], output_size=2)[1](np.ones((1, 2, 2, 2)))["x"]
    np.testing.assert_allclose(grads["x"], live_only, rtol=1e-14)


def test_non_finite_values_reach_only_the_bins_that_cover_them(rng):
    x = rng.standard_normal((1, 2, 6, 8))
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 4, 6] = np.inf
    boxes = np.array([[0, 0.0, 0.0, 1.5, 1.5], [0, 3.0, 2.0, 7.0, 5.0], [0, 4.5, 0.0, 7.0, 2.5]])
    clean = np.where(np.isfinite(x), x, 0.0)
    with np.errstate(all="raise"):
        y, pull = vjp(OP, x, boxes, output_size=(1, 2))
        grads = pull(np.ones_like(y))
    ref = precise_roi_pool(clean, boxes, (1, 2))
    assert np.isnan(y[0, 0]).all()  # both bins of box 0 reach within a pixel of (1, 1)
    np.testing.assert_array_equal(y[0, 1], ref[0, 1])
    np.testing.assert_array_equal(y[1, 1], [[ref[1, 1, 0, 0], np.inf]])  # only the right bin covers x = 6
    np.testing.assert_array_equal(y[1, 0], ref[1, 0])
    np.testing.assert_array_equal(y[2], ref[2])  # far from both
    assert np.isnan(grads["boxes"][:2, 1:]).all() and np.isfinite(grads["boxes"][2]).all()
    np.testing.assert_allclose(grads["x"], vjp(OP, clean, boxes, output_size=(1, 2))[1](np.ones_like(y))["x"])


def test_float16_is_computed_in_float32(rng):
    x = rng.standard_normal((2, 3, 5, 6))
    y16 = precise_roi_pool(x.astype(np.float16), BOXES, 2)
    assert y16.dtype == np.float16
    np.testing.assert_allclose(
        y16, precise_roi_pool(x.astype(np.float16).astype(np.float64), BOXES, 2), atol=2e-3
    )
    y32, pull = vjp(OP, x.astype(np.float32), BOXES, output_size=2)
    assert y32.dtype == np.float32 and pull(np.ones_like(y32))["x"].dtype == np.float32


def test_registered_with_example_and_vjp():
    from poolkit import registry

    info = registry.get(OP)
    assert info.family == "structured" and info.ndims == (2,) and info.differentiable == ("x", "boxes")
    assert info.arrays == ("x", "boxes") and registry.resolve("precise_roi_pool2d")[1] == 2
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    arrays, settings = info.example(x)
    y, pull = vjp(OP, *arrays, **settings)
    assert y.shape == (2, 3, 2, 3)
    grads = pull(np.ones_like(y))
    assert set(grads) == {"x", "boxes"} and all(np.isfinite(v).all() for v in grads.values())


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "x_shape,boxes,kw,error,match",
    [
        ((2, 5, 6), BOXES, {}, PoolingInputError, r"4-D array shaped \(N, C, H, W\), got shape \(2, 5, 6\)"),
        ((2, 3, 5, 6), BOXES[:, 1:], {}, PoolingInputError, r"boxes must be a \(K, 5\) array"),
        ((2, 3, 5, 6), [BOXES[:2]], {}, PoolingInputError, r"boxes\[0\] must have shape \(L, 4\)"),
        ((1, 3, 5, 6), BOXES, {}, PoolingInputError, r"batch index .* must be an integer in \[0, 1\)"),
        ((2, 3, 5, 6), [np.zeros((1, 4))] * 3, {}, PoolingInputError, "list of 3 per-image arrays"),
        ((2, 3, 5, 6), np.array([[0, 0, 0, np.inf, 1.0]]), {}, PoolingInputError, "boxes must be finite"),
        ((2, 3, 5, 6), BOXES, {"spatial_scale": 0.0}, PoolingConfigError, "spatial_scale must be >"),
        ((2, 3, 5, 6), BOXES, {"output_size": 0}, PoolingConfigError, "output_size"),
        ((2, 3, 5, 6), BOXES, {"data_format": "NHWC"}, PoolingConfigError, "data_format must be one of"),
    ],
)
def test_errors(x_shape, boxes, kw, error, match):
    kw = {"output_size": 2, **kw}
    with pytest.raises(error, match=match):
        precise_roi_pool(np.zeros(x_shape), boxes, **kw)


def test_error_for_integer_input_and_bad_gradient_shape():
    with pytest.raises(PoolingInputError, match="expects a floating-point x"):
        precise_roi_pool(np.zeros((1, 1, 3, 3), dtype=np.int64), np.array([[0, 0, 0, 1, 1.0]]), 1)
    y, pull = vjp(OP, np.zeros((1, 1, 3, 3)), np.array([[0, 0, 0, 1, 1.0]]), output_size=2)
    with pytest.raises(PoolingInputError, match=r"grad_output must have shape \(1, 1, 2, 2\)"):
        pull(np.ones((1, 1, 2, 3)))
