"""max_pool: parity with PyTorch and TensorFlow semantics, gradients, anchors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poolkit.errors import PoolingConfigError
from poolkit.ops import max_pool, max_pool1d, max_pool2d, max_pool3d, vjp

from cases import ALL_MAX_CASES, WINDOW_CASES, Case, select
from helpers import check_fd, distinct, torch_vjp
from reference import naive_pool

TORCH = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
OURS = {1: max_pool1d, 2: max_pool2d, 3: max_pool3d}


@pytest.mark.parametrize("case", ALL_MAX_CASES)
def test_forward_and_indices_match_torch_exactly(case: Case, rng):
    x = case.input(rng)
    kw = case.window() | dict(dilation=case.dilation)
    y, idx = OURS[case.nd](x, return_indices=True, **kw)
    ty, _, tidx = torch_vjp(TORCH[case.nd], x, None, return_indices=True, **kw)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(idx, tidx)
    assert idx.dtype == np.int64


@pytest.mark.parametrize("c", select(ALL_MAX_CASES, exclude=("2d-window-without-valid-tap",)))
def test_backward_matches_torch(c: Case, rng):
    x = c.input(rng)
    kw = c.window() | dict(dilation=c.dilation)
    y, pullback = vjp(f"max_pool{c.nd}d", x, **kw)
    g = rng.standard_normal(y.shape)
    _, tg, _ = torch_vjp(TORCH[c.nd], x, g, **kw)
    np.testing.assert_allclose(pullback(g)["x"], tg, rtol=1e-12, atol=1e-12)


def test_window_without_valid_tap_has_no_gradient(rng):
    x = rng.standard_normal((1, 1, 2, 2))
    y, pullback = vjp("max_pool2d", x, kernel_size=2, stride=1, padding=1, dilation=3)
    assert np.isneginf(y).all()
    assert not pullback(np.ones_like(y))["x"].any()


@pytest.mark.parametrize(
    "c",
    select(
        ALL_MAX_CASES,
        exclude=("2d-window-without-valid-tap",),
        where=lambda c: c.kind != "nan" and c.shape[0] > 0,
    ),
)
def test_matches_loop_reference(c: Case, rng):
    x = c.input(rng)
    from poolkit.geometry import window_spec

    spec = window_spec(x.shape[2:], c.kernel_size, c.stride, c.padding, c.dilation, c.ceil_mode)
    ry, ridx = naive_pool(x, "max", spec.kernel_size, spec.stride, spec.padding, spec.dilation, c.ceil_mode)
    y, idx = max_pool(x, c.kernel_size, c.stride, c.padding, c.dilation, c.ceil_mode, return_indices=True)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)


@pytest.mark.parametrize(
    "padding",
    [
        pytest.param("same", id="same"),
        pytest.param(((0, 1), (1, 0)), id="pairs"),
        pytest.param(((1, 1), (0, 1)), id="pairs2"),
    ],
)
@pytest.mark.parametrize("kind", ["normal", "negative", "ties"])
def test_same_and_asymmetric_padding_match_torch_with_explicit_neg_inf_pad(padding, kind, rng):
    x = Case((2, 3, 7, 8), 3, kind=kind).input(rng)
    from poolkit.geometry import window_spec

    spec = window_spec((7, 8), 3, 2, padding)
    (ht, hb), (wl, wr) = spec.padding
    xt = F.pad(torch.tensor(x), (wl, wr, ht, hb), value=-np.inf)
    ty = F.max_pool2d(xt, 3, 2).numpy()
    np.testing.assert_array_equal(max_pool2d(x, 3, 2, padding), ty)


def test_channels_last_matches_channels_first_and_torch(rng):
    x = rng.standard_normal((2, 3, 9, 10))
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    y, idx = max_pool2d(x, 3, 2, 1, return_indices=True)
    yl, idxl = max_pool2d(xl, 3, 2, 1, return_indices=True, data_format="channels_last")
    np.testing.assert_array_equal(np.moveaxis(yl, -1, 1), y)
    np.testing.assert_array_equal(np.moveaxis(idxl, -1, 1), idx)
    assert yl.flags.c_contiguous  # output in the input's layout, no transpose copy
    xt = torch.tensor(x).contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(F.max_pool2d(xt, 3, 2, 1).numpy(), y)
    _, pullback = vjp("max_pool2d", xl, kernel_size=3, stride=2, padding=1, data_format="channels_last")
    _, pullback_cf = vjp("max_pool2d", x, kernel_size=3, stride=2, padding=1)
    g = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(
        np.moveaxis(pullback(np.moveaxis(g, 1, -1))["x"], -1, 1), pullback_cf(g)["x"]
    )


def test_unbatched_input(rng):
    x = rng.standard_normal((3, 7, 7))
    np.testing.assert_array_equal(max_pool2d(x, 2), max_pool2d(x[None], 2)[0])
    ty = F.max_pool2d(torch.tensor(x), 2).numpy()
    np.testing.assert_array_equal(max_pool2d(x, 2), ty)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_low_precision(dtype, rng):
    x = rng.standard_normal((2, 3, 9, 9)).astype(dtype)
    y, idx = max_pool2d(x, 3, 2, 1, return_indices=True)
    assert y.dtype == dtype
    ty, ti = F.max_pool2d(torch.tensor(x.astype(np.float32)), 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(y, ty.numpy().astype(dtype))
    np.testing.assert_array_equal(idx, ti.numpy())
    _, pullback = vjp("max_pool2d", x, kernel_size=3, stride=2, padding=1)
    assert pullback(np.ones(y.shape, dtype))["x"].dtype == dtype


def test_generic_max_pool_infers_rank(rng):
    x = rng.standard_normal((1, 2, 4, 5, 6))
    np.testing.assert_array_equal(max_pool(x, 2), max_pool3d(x, 2))
    np.testing.assert_array_equal(max_pool(x[:, :, 0], (2, 3)), max_pool2d(x[:, :, 0], (2, 3)))


@pytest.mark.parametrize(
    "case,layout",
    [
        pytest.param(Case((1, 2, 6, 7), 3, 2, 1, ceil_mode=True), "channels_first", id="2d-pad-ceil"),
        pytest.param(Case((1, 2, 6, 6), 3, 1, 1), "channels_first", id="2d-overlap"),
        pytest.param(
            Case((1, 2, 7, 6), (2, 3), 2, ((0, 1), (1, 1))), "channels_last", id="2d-pairs-channels-last"
        ),
        pytest.param(Case((1, 2, 9), 3, 2, 1, dilation=2), "channels_first", id="1d-dilation"),
        pytest.param(Case((1, 1, 4, 5, 4), 2, 1, "same"), "channels_first", id="3d-same"),
    ],
)
def test_finite_differences(case, layout, rng):
    x = distinct(case.shape, rng)
    if layout == "channels_last":
        x = np.moveaxis(x, 1, -1).copy()
    check_fd(
        "max_pool",
        x,
        rng,
        kernel_size=case.kernel_size,
        stride=case.stride,
        padding=case.padding,
        dilation=case.dilation,
        ceil_mode=case.ceil_mode,
        data_format=layout,
    )


# ------------------------------------------------------------------- anchors (§b2)


def test_padding_is_negative_infinity_not_zero():
    x = -np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    y = max_pool2d(x, 2, 2, 1)
    assert (y < 0).all()  # numpy-ml pads zeros and returns 0 on every border
    np.testing.assert_array_equal(y[0, 0], [[-1, -2, -4], [-5, -6, -8], [-13, -14, -16]])


def test_unequal_padding_example_from_pytorch_71362():
    x = np.array([[[-1.0, -2.0]]])
    np.testing.assert_array_equal(max_pool1d(x, 2, 1, ((0, 1),)), [[[-1.0, -2.0]]])


def test_ties_go_to_first_maximum_in_row_major_order():
    x = np.array([[[[1.0, 5.0], [5.0, 5.0]]]])
    y, idx = max_pool2d(x, 2, return_indices=True)
    assert y.item() == 5.0 and idx.item() == 1
    _, pullback = vjp("max_pool2d", x, kernel_size=2)
    np.testing.assert_array_equal(pullback(np.ones((1, 1, 1, 1)))["x"], [[[[0, 1], [0, 0]]]])


def test_nan_wins_and_the_last_nan_is_reported():
    x = np.array([[[1.0, np.nan, 3.0, np.nan, 0.0]]])
    y, idx = max_pool1d(x, 5, return_indices=True)
    assert np.isnan(y.item()) and idx.item() == 3


def test_tensorflow_index_format():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5))
    _, idx = max_pool2d(x, 2, return_indices=True)
    _, tf_idx = max_pool2d(x, 2, return_indices=True, index_format="tf")
    _, tfb_idx = max_pool2d(x, 2, return_indices=True, index_format="tf", include_batch_in_index=True)
    c = np.arange(3).reshape(1, 3, 1, 1)
    b = np.arange(2).reshape(2, 1, 1, 1)
    np.testing.assert_array_equal(tf_idx, idx * 3 + c)
    np.testing.assert_array_equal(tfb_idx, idx * 3 + c + b * 4 * 5 * 3)
    with pytest.raises(PoolingConfigError, match="include_batch_in_index=True needs index_format='tf'"):
        max_pool2d(x, 2, return_indices=True, include_batch_in_index=True)


def test_empty_batch_backward():
    x = np.zeros((0, 3, 6, 6))
    y, pullback = vjp("max_pool2d", x, kernel_size=2)
    assert y.shape == (0, 3, 3, 3)
    assert pullback(np.zeros(y.shape))["x"].shape == (0, 3, 6, 6)


def test_window_cases_are_valid_for_torch():
    # The shared list must stay valid for PyTorch's average pooling too.
    for p in WINDOW_CASES:
        c = p.values[0]
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[c.nd]
        fn(torch.zeros(c.shape), c.kernel_size, c.stride, c.padding, c.ceil_mode)
